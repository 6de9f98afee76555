//! Stopping: a first SIGINT/SIGTERM asks for a graceful stop (stop reading, flush batches,
//! commit, exit 0 within `pipeline.shutdown_timeout`); a second one stops at once. Either way
//! only finished work is committed, so nothing acknowledged is lost.

use std::sync::Arc;

use tokio::sync::watch;

/// How far the stop has gone. Stages only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Running,
    Graceful,
    Immediate,
}

/// A shared stop switch.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Stage>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Stage::Running)),
        }
    }

    /// Moves to `stage` unless already past it.
    pub fn request(&self, stage: Stage) {
        self.tx.send_if_modified(|s| {
            let advance = stage > *s;
            if advance {
                *s = stage;
            }
            advance
        });
    }

    /// Moves one stage on: running -> graceful -> immediate.
    pub fn escalate(&self) {
        let next = match self.stage() {
            Stage::Running => Stage::Graceful,
            _ => Stage::Immediate,
        };
        self.request(next);
    }

    pub fn stage(&self) -> Stage {
        *self.tx.borrow()
    }

    /// Waits until the stop has reached `stage`.
    pub async fn reached(&self, stage: Stage) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so this only ends when the stage is reached.
        let _ = rx.wait_for(|s| *s >= stage).await;
    }

    /// Escalates on every SIGINT and SIGTERM.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                this.escalate();
                match this.stage() {
                    Stage::Graceful => tracing::info!("stop requested: finishing batches and committing (signal again to stop at once)"),
                    _ => tracing::warn!("stopping at once: unfinished events are not committed and will be read again"),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_only_move_forward() {
        let s = Shutdown::new();
        s.escalate();
        s.reached(Stage::Graceful).await;
        s.request(Stage::Running);
        assert_eq!(s.stage(), Stage::Graceful);
        s.escalate();
        assert_eq!(s.stage(), Stage::Immediate);
        s.reached(Stage::Graceful).await;
    }
}
