//! `type = "stdout"`: rendered records, one per line, on standard output. Useful for trying
//! templates and for piping into another tool; logs go to stderr, so stdout holds only records.

use std::io::Write;

use async_trait::async_trait;

use super::{DeliveryError, Receipt, Sink};
use crate::batch::Batch;

pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&self, batch: &Batch) -> Result<Receipt, DeliveryError> {
        let bytes = batch.lines();
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()
        })
        .await
        .map_err(|e| DeliveryError::retryable(format!("stdout writer failed: {e}")))?
        .map_err(|e| match e.kind() {
            // Whoever read our output has gone; retrying cannot bring them back.
            std::io::ErrorKind::BrokenPipe => DeliveryError::permanent(format!("stdout: {e}")),
            _ => DeliveryError::retryable(format!("stdout: {e}")),
        })?;
        Ok(Receipt::for_batch(batch))
    }

    fn describe(&self) -> String {
        "standard output".into()
    }
}
