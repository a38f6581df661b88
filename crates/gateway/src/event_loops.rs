//! Thread-per-core serving: the listening socket is served by N event loops, each a
//! single-threaded tokio runtime on its own OS thread, and a connection stays on the loop that
//! accepted it from its first byte to its last. A request, its call to an HTTP upstream (each
//! loop has its own outbound connection pool, [`crate::upstream::http::loop_client`]) and its
//! answer never hop between threads (a stdio upstream's pipes are read by its supervisor). On a work-stealing runtime an idle worker is woken to look for work at
//! nearly every step of a call: at 1,000 calls/s that cost ~45 µs of added p50 latency on the
//! benchmark machine (BENCHMARKS.md, "Latest: event loops and call-paced audit commits").
//!
//! Background work (audit jobs, config watch, SIEM export, session reaping) stays on the
//! runtime that called [`EventLoops::start`]. Work a request spawns (relayed SSE streams, an
//! outcome record written later) runs on its loop, so a loop keeps running after it stopped
//! serving until [`EventLoops::release`]: the gateway's shutdown (upstreams stopped, records
//! flushed) still has them.

use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The running loops of one listener.
pub struct EventLoops {
    /// One per loop: its serve function's result, once it returned.
    served: Vec<oneshot::Receiver<io::Result<()>>>,
    /// Lets the loops end (dropping their runtimes and whatever still runs on them).
    release: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EventLoops {
    /// How many loops serve when nothing says otherwise: one per CPU.
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// Starts `count` loops that all accept on `listener` and run `serve(listener, stop)` on
    /// it; `serve` returns once `stop` is cancelled and its connections are done.
    pub fn start<S, F>(
        count: usize,
        listener: TcpListener,
        stop: &CancellationToken,
        serve: S,
    ) -> io::Result<EventLoops>
    where
        S: Fn(TcpListener, WaitForCancellationFutureOwned) -> F + Send + Sync + 'static,
        F: Future<Output = io::Result<()>> + 'static,
    {
        let listener = listener.into_std()?;
        let serve = Arc::new(serve);
        let release = CancellationToken::new();
        let mut loops = EventLoops {
            served: Vec::new(),
            release: release.clone(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let listener = listener.try_clone()?;
            let (served, result) = oneshot::channel();
            let (serve, stop, release) = (serve.clone(), stop.clone(), release.clone());
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-loop-{index}"))
                .spawn(move || run_loop(listener, &*serve, stop, release, served))?;
            loops.served.push(result);
            loops.threads.push(thread);
        }
        Ok(loops)
    }

    /// Waits until every loop's serve function returned; the first error, if any.
    pub async fn served(&mut self) -> io::Result<()> {
        let mut outcome = Ok(());
        for result in self.served.drain(..) {
            let result = result.await.unwrap_or_else(|_| {
                Err(io::Error::other(
                    "an event loop stopped before it finished serving",
                ))
            });
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }

    /// Ends the loops (tasks still on them are dropped) and waits for their threads.
    pub async fn release(mut self) {
        self.release.cancel();
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("an event loop thread panicked");
                }
            }
        });
        if joined.await.is_err() {
            tracing::error!("waiting for the event loop threads failed");
        }
    }
}

impl Drop for EventLoops {
    fn drop(&mut self) {
        // Without release() (the owner went away): the loops still end.
        self.release.cancel();
    }
}

/// One loop's thread: a current-thread runtime serving `listener` until `stop`, then kept
/// alive until `release`.
fn run_loop<S, F>(
    listener: std::net::TcpListener,
    serve: &S,
    stop: CancellationToken,
    release: CancellationToken,
    served: oneshot::Sender<io::Result<()>>,
) where
    S: Fn(TcpListener, WaitForCancellationFutureOwned) -> F,
    F: Future<Output = io::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = served.send(Err(error));
            return;
        }
    };
    crate::upstream::http::use_loop_client();
    runtime.block_on(async move {
        let result = match TcpListener::from_std(listener) {
            Ok(listener) => serve(listener, stop.cancelled_owned()).await,
            Err(error) => Err(error),
        };
        let _ = served.send(result);
        release.cancelled().await;
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A serve function that answers each connection with the name of its loop's thread, and
    /// leaves a task on the loop that reports into `late` only after serving stopped.
    fn answer_with_thread_name(
        late: Arc<Mutex<Vec<String>>>,
    ) -> impl Fn(
        TcpListener,
        WaitForCancellationFutureOwned,
    ) -> std::pin::Pin<Box<dyn Future<Output = io::Result<()>>>>
    + Send
    + Sync
    + 'static {
        move |listener, stop| {
            let late = late.clone();
            Box::pin(async move {
                let name = std::thread::current().name().unwrap_or("?").to_owned();
                let lingering = {
                    let (late, name) = (late.clone(), name.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        late.lock().unwrap().push(name);
                    })
                };
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        () = &mut stop => break,
                        accepted = listener.accept() => {
                            let (mut socket, _) = accepted?;
                            socket.write_all(name.as_bytes()).await?;
                        }
                    }
                }
                drop(lingering); // detached: it keeps running on this loop
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_served_on_the_loops_and_their_work_outlives_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let late = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let mut loops =
            EventLoops::start(2, listener, &stop, answer_with_thread_name(late.clone())).unwrap();
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut name = String::new();
            socket.read_to_string(&mut name).await.unwrap();
            assert!(name.starts_with("portcullis-loop-"), "served on {name:?}");
            seen.insert(name);
        }
        assert!(!seen.is_empty());
        stop.cancel();
        loops
            .served()
            .await
            .expect("both loops stopped serving cleanly");
        // Serving stopped, but the tasks it left behind still run until release.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            late.lock().unwrap().len(),
            2,
            "each loop's lingering task ran"
        );
        loops.release().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listening socket is closed once the loops are released"
        );
    }

    #[tokio::test]
    async fn a_loop_whose_serve_fails_reports_the_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        let mut loops = EventLoops::start(1, listener, &stop, |_listener, _stop| async {
            Err(io::Error::other("serve failed"))
        })
        .unwrap();
        let error = loops.served().await.expect_err("the failure is reported");
        assert_eq!(error.to_string(), "serve failed");
        loops.release().await;
    }
}
