//! The small client the command line uses to reach a running daemon's admin API, when the
//! daemon holds the park store (one process at a time). The token comes from `admin.token`
//! in the configuration or from `AUDITSTREAM_ADMIN_TOKEN`.

use std::time::Duration;

use serde_json::Value;

use crate::config::AdminConfig;

/// Talks to `http://<admin.listen>`.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(config: &AdminConfig) -> anyhow::Result<Self> {
        let token = config
            .token
            .as_ref()
            .map(|t| t.expose().to_string())
            .or_else(|| std::env::var("AUDITSTREAM_ADMIN_TOKEN").ok());
        Ok(Self {
            base: format!("http://{}", config.listen),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach the daemon's admin API at {}: {e}", self.base)
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("the admin API answered {status}: {body}");
        }
        Ok(resp)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        resp.json_value().await
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        Ok(resp.bytes().await?.to_vec())
    }

    pub async fn post_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .send(self.http.post(format!("{}{path}", self.base)))
            .await?;
        resp.json_value().await
    }
}

trait JsonValue {
    async fn json_value(self) -> anyhow::Result<Value>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> anyhow::Result<Value> {
        let bytes = self.bytes().await?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}
