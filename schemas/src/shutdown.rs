//! One shutdown signal for every role of a process: the archiver and the speed layer (threads that
//! check it between steps), the recompute and its scheduler (tasks that await it), the generator.
//! `serve` holds one and stops everything with it; clones share it.
//!
//! Two ways to stop: **gracefully** (finish the step, write what is buffered) or **abandon** (return
//! at once, as a crash would: the archiver's buffered events are consumed again on restart; tests
//! use it). An abandon is never downgraded to a graceful stop.

use std::sync::Arc;

use tokio::sync::watch;

/// Where a [`Shutdown`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    Running,
    Graceful,
    Abandon,
}

#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Sender<Stop>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Stop::Running)))
    }
}

impl Shutdown {
    /// Stop after the current step, writing what is buffered.
    pub fn stop(&self) {
        self.raise(Stop::Graceful);
    }

    /// Stop at once, dropping what is buffered as a crash would.
    pub fn abandon(&self) {
        self.raise(Stop::Abandon);
    }

    fn raise(&self, to: Stop) {
        self.0.send_if_modified(|stop| {
            let raised = to > *stop;
            if raised {
                *stop = to;
            }
            raised
        });
    }

    pub fn state(&self) -> Stop {
        *self.0.borrow()
    }

    /// Whether a stop of either kind was asked for.
    pub fn is_stopping(&self) -> bool {
        self.state() != Stop::Running
    }

    /// Completes once an abandon was asked for (at once if it was).
    pub async fn abandoned(&self) {
        let mut state = self.0.subscribe();
        let _ = state.wait_for(|&stop| stop == Stop::Abandon).await;
    }

    /// Completes once a stop was asked for (at once if it was).
    pub async fn stopped(&self) {
        let mut state = self.0.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = state.wait_for(|&stop| stop != Stop::Running).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_one_signal_and_abandon_is_never_downgraded() {
        let shutdown = Shutdown::default();
        let clone = shutdown.clone();
        assert!(!clone.is_stopping());
        let waiting = tokio::spawn(async move { clone.stopped().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        shutdown.abandon();
        waiting.await.unwrap();
        shutdown.stop();
        assert_eq!(shutdown.state(), Stop::Abandon);
        // Already stopped: completes at once.
        shutdown.stopped().await;
    }
}
