//! Real servers on 127.0.0.1 for the sink tests: an S3 server (s3s-fs), an HTTP receiver
//! (axum) with fault injection, a TCP front that drops connections mid-request, and TLS
//! certificates from a private CA.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

pub const S3_KEY: &str = "AKIDAUDITSTREAMTEST";
pub const S3_SECRET: &str = "auditstream-test-secret";

/// Starts an S3 server storing under `root`; returns its endpoint URL.
pub async fn start_s3(root: &Path) -> String {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(S3_KEY, S3_SECRET));
    let service = b.build();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let conn = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = conn
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// An S3 server like [`start_s3`] that answers `500 InternalError` to every upload of part
/// `fail_part` of a multipart upload; returns its address and every request's method and query.
pub async fn start_s3_failing_part(
    root: &Path,
    fail_part: u32,
) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(S3_KEY, S3_SECRET));
    let service = b.build();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let (service, log) = (service.clone(), log.clone());
            let handler = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let (service, log) = (service.clone(), log.clone());
                    async move {
                        let query = req.uri().query().unwrap_or("").to_string();
                        log.lock()
                            .unwrap()
                            .push((req.method().to_string(), query.clone()));
                        if query.contains(&format!("partNumber={fail_part}&"))
                            || query.ends_with(&format!("partNumber={fail_part}"))
                        {
                            let xml = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>scripted failure of one part</Message></Error>";
                            return Ok(hyper::Response::builder()
                                .status(500)
                                .body(s3s::Body::from(xml.to_string()))
                                .unwrap());
                        }
                        hyper::service::Service::call(&service, req).await
                    }
                },
            );
            tokio::spawn(async move {
                let conn = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let _ = conn
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), handler)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// An S3 client for checking what the sink wrote.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            S3_KEY, S3_SECRET, None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// What the HTTP receiver answers to the next request.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// Wait this long, then 200 (slower than the client's timeout, the client gives up).
    Slow(Duration),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    /// The body, decompressed when `Content-Encoding` says so.
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Default)]
pub struct ReceiverState {
    pub script: VecDeque<Answer>,
    /// Answer every request with this once the script is done (default 200).
    pub then: Option<Answer>,
    /// Bodies larger than this get 413.
    pub max_body: Option<usize>,
    /// Requests without exactly this `Authorization` get 401.
    pub require_auth: Option<String>,
    pub requests: Vec<Received>,
}

/// An HTTP receiver with a script of answers.
#[derive(Clone)]
pub struct Receiver {
    pub state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(ReceiverState::default())),
        }
    }

    pub fn script(&self, answers: Vec<Answer>) -> &Self {
        self.state.lock().unwrap().script.extend(answers);
        self
    }

    pub fn then(&self, answer: Answer) -> &Self {
        self.state.lock().unwrap().then = Some(answer);
        self
    }

    pub fn require_auth(&self, value: &str) -> &Self {
        self.state.lock().unwrap().require_auth = Some(value.to_string());
        self
    }

    pub fn max_body(&self, n: usize) -> &Self {
        self.state.lock().unwrap().max_body = Some(n);
        self
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Lines of the bodies the receiver accepted (answered 2xx), in arrival order.
    pub fn accepted_lines(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(|r| {
                String::from_utf8_lossy(&r.body)
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/", axum::routing::any(handle))
            .route("/{*path}", axum::routing::any(handle))
            .with_state(self.clone())
    }

    /// Serves plain HTTP; returns the address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    /// Serves HTTPS with the given rustls configuration; returns the address.
    pub async fn serve_tls(&self, config: rustls::ServerConfig) -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let app = self.router();
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
        tokio::spawn(async move {
            let _ = axum_server::from_tcp_rustls(std_listener, tls)
                .unwrap()
                .serve(app.into_make_service())
                .await;
        });
        addr
    }
}

async fn handle(State(rx): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let decoded = match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let mut out = Vec::new();
            use std::io::Read;
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Some("zstd") => zstd::decode_all(&body[..]).unwrap(),
        _ => body.to_vec(),
    };
    let answer = {
        let mut st = rx.state.lock().unwrap();
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
        if st
            .require_auth
            .as_deref()
            .is_some_and(|want| Some(want) != auth)
        {
            Answer::Status(401)
        } else if st.max_body.is_some_and(|m| body.len() > m) {
            Answer::Status(413)
        } else {
            st.script
                .pop_front()
                .or_else(|| st.then.clone())
                .unwrap_or(Answer::Ok)
        }
    };
    let status = match &answer {
        Answer::Ok | Answer::Slow(_) => 200,
        Answer::Status(s) => *s,
        Answer::RetryAfter(_) => 429,
    };
    rx.state.lock().unwrap().requests.push(Received {
        at: Instant::now(),
        headers,
        body: decoded,
        status,
    });
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Answer::Status(s) => (
            StatusCode::from_u16(s).unwrap(),
            format!("{{\"error\":\"scripted {s}\"}}"),
        )
            .into_response(),
        Answer::RetryAfter(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
    }
}

/// A TCP front for `target` that reads the first part of each of the first `drops`
/// connections and closes them mid-request, then forwards the rest.
pub async fn dropping_front(target: SocketAddr, drops: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let left = Arc::new(Mutex::new(drops));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let drop_this = {
                let mut l = left.lock().unwrap();
                let d = *l > 0;
                if d {
                    *l -= 1;
                }
                d
            };
            tokio::spawn(async move {
                if drop_this {
                    let mut buf = [0u8; 64];
                    let _ = client.read(&mut buf).await;
                    return; // closed mid-request
                }
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// A private CA with a server certificate for 127.0.0.1 and a client certificate.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "auditstream test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "auditstream");
        let client = client_params.signed_by(&client_key, &issuer).unwrap();
        Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// A server configuration, optionally requiring a client certificate from this CA.
    pub fn server_config(&self, require_client_cert: bool) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let certs = vec![CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        builder.with_single_cert(certs, key).unwrap()
    }
}

/// A TCP front for `target` that can be switched off: while off it closes every connection
/// (new and open ones), like a destination that went away.
#[derive(Clone)]
pub struct Switch {
    pub addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Switch {
    pub async fn start(target: SocketAddr, up: bool) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(up);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    if !*rx.borrow() {
                        return; // closed at once
                    }
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {} // switched off: drop both ends
                    }
                });
            }
        });
        Switch { addr, up: tx }
    }

    pub fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Emails received by [`start_smtp`], as raw messages with quoted-printable decoded.
#[derive(Clone, Default)]
pub struct MailCatcher {
    pub mails: Arc<Mutex<Vec<String>>>,
    current: Vec<u8>,
}

impl mailin_embedded::Handler for MailCatcher {
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let raw = std::mem::take(&mut self.current);
        let decoded =
            quoted_printable::decode(&raw, quoted_printable::ParseMode::Robust).unwrap_or(raw);
        self.mails
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&decoded).into_owned());
        mailin_embedded::response::OK
    }
}

impl MailCatcher {
    pub fn all(&self) -> Vec<String> {
        self.mails.lock().unwrap().clone()
    }

    /// The mails whose Subject contains `text`.
    pub fn with_subject(&self, text: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|m| subject(m).contains(text))
            .collect()
    }
}

/// The Subject header of a raw mail (unfolded).
pub fn subject(mail: &str) -> String {
    let mut lines = mail.lines().skip_while(|l| !l.starts_with("Subject: "));
    let mut s = lines
        .next()
        .map(|l| l.trim_start_matches("Subject: ").to_string())
        .unwrap_or_default();
    for l in lines.take_while(|l| l.starts_with(' ') || l.starts_with('\t')) {
        s.push(' ');
        s.push_str(l.trim());
    }
    s
}

/// A free port on 127.0.0.1 for a server the test starts later (bound, then released). It is
/// picked below Linux's ephemeral range (32768 and up), so no `127.0.0.1:0` listener of a
/// test running alongside can be handed the same port meanwhile.
pub fn free_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts an SMTP server on 127.0.0.1:`port` (a real SMTP conversation, no TLS offered).
pub fn start_smtp(port: u16) -> MailCatcher {
    let catcher = MailCatcher::default();
    let mut server = mailin_embedded::Server::new(catcher.clone());
    server.with_name("test-smtp");
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    server.with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    catcher
}
