//! Composition: capture from the WAL running beside delivery, as one unit that starts and
//! stops together. The library's [`Listener`](crate::Listener) and the daemon both run
//! logical capture this way.

use std::future::Future;

use pgevents_dispatch::Dispatcher;
use pgevents_log::inline::Offer;
use pgevents_logical::LogicalCapture;

/// Runs `capture` beside `dispatcher` until `shutdown` completes: both stop on shutdown (the
/// dispatcher draining in-flight work), and a capture that fails for good stops the
/// dispatcher too. Returns the capture's and the dispatcher's results.
pub async fn run_beside<F: Future>(
    capture: LogicalCapture,
    dispatcher: Dispatcher,
    shutdown: F,
) -> (
    Result<(), pgevents_logical::Error>,
    Result<(), pgevents_log::Error>,
) {
    // Events that nothing holds back are delivered as they are written from the stream.
    let offer = Offer::default();
    let capture = capture.with_delivery(offer.clone());
    let dispatcher = dispatcher.with_offer(offer);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let signal = async {
        tokio::select! {
            _ = shutdown => {}
            _ = stopped(stop_rx.clone()) => {}
        }
        let _ = stop_tx.send(true);
    };
    let capture = async {
        let result = capture.run(stopped(stop_rx.clone())).await;
        let _ = stop_tx.send(true);
        result
    };
    let dispatch = dispatcher.run(stopped(stop_rx.clone()));
    let ((), captured, dispatched) = tokio::join!(signal, capture, dispatch);
    (captured, dispatched)
}
