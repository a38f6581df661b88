//! The event stream of one upstream call ([`Events`]), optionally with the call's work inline.
//!
//! Usually a connector's reader task feeds the call's channel and the proxy only receives. A call
//! whose whole upstream exchange is one request and one answer (a modern HTTP POST answered with
//! a JSON body) can instead carry that work as a *driver* future: it runs inside the proxy's own
//! task whenever the proxy waits for the next event, so the call costs no extra task and no
//! wake-up across worker threads. Dropping [`Events`] drops the driver, which closes the upstream
//! request (the modern cancellation). A driver that has to outlive the proxy's attention (a held
//! call) is moved onto its own task with [`Events::detach`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::UpstreamEvent;

/// Events of one call: notifications, server→client requests, then exactly one final response.
pub struct Events {
    rx: mpsc::Receiver<UpstreamEvent>,
    /// The call's upstream work when it runs in the receiver's task; `None` once finished.
    driver: Option<BoxFuture<'static, ()>>,
}

impl Events {
    /// Events fed by another task.
    pub(crate) fn new(rx: mpsc::Receiver<UpstreamEvent>) -> Events {
        Events { rx, driver: None }
    }

    /// Runs `driver` (which feeds this call's channel) whenever the events are awaited.
    pub(crate) fn set_driver(&mut self, driver: BoxFuture<'static, ()>) {
        self.driver = Some(driver);
    }

    /// The next event; `None` once the call has ended. Cancel-safe: the driver's progress lives
    /// in `self`, not in the returned future.
    pub async fn recv(&mut self) -> Option<UpstreamEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event, advancing the inline driver first.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<UpstreamEvent>> {
        if let Some(driver) = self.driver.as_mut()
            && Pin::new(driver).poll(cx).is_ready()
        {
            self.driver = None;
        }
        self.rx.poll_recv(cx)
    }

    /// Moves an unfinished inline driver onto its own task, for events that will not be awaited
    /// for a while. The call stays cancellable: the driver ends when the call's entry goes.
    pub fn detach(&mut self) {
        if let Some(driver) = self.driver.take() {
            tokio::spawn(driver);
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("inline", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}
