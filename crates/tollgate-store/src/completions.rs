//! Answers to journal callers, handed to their thread in one wake-up per batch.
//!
//! A caller of [`Journal::write`](crate::Journal::write) waits on a oneshot that the log writer
//! answers once the caller's batch is synced. Answered from the writer thread, each answer wakes
//! the caller's runtime from outside: for a current-thread runtime that is an `eventfd` write by
//! the writer and a wake-up of the runtime's thread, per request. A thread that runs [`pump`]
//! instead receives its callers' answers together: the writer queues them in the thread's inbox
//! and wakes the pump once per batch, and the pump answers each on the callers' own thread, where
//! waking a task of the same runtime is a push onto its run queue.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::journal::StoreError;

/// The sender half a journal caller waits on.
pub(crate) type Done = oneshot::Sender<Result<(), StoreError>>;

/// Answers queued for one thread's pump.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

struct InboxState {
    ready: Vec<(Done, Result<(), StoreError>)>,
    /// The pump is gone: answer directly.
    closed: bool,
}

thread_local! {
    static INBOX: RefCell<Option<Arc<Inbox>>> = const { RefCell::new(None) };
}

/// This thread's inbox, when it runs a [`pump`].
pub(crate) fn current() -> Option<Arc<Inbox>> {
    INBOX.try_with(|i| i.borrow().clone()).ok().flatten()
}

impl Inbox {
    /// Queue `result` for `done`'s caller; `true` when the pump must be woken for it (call
    /// [`Inbox::wake`] once for all of a batch's answers).
    pub(crate) fn queue(&self, done: Done, result: Result<(), StoreError>) -> bool {
        let mut st = self.state.lock();
        if st.closed {
            drop(st);
            let _ = done.send(result);
            return false;
        }
        st.ready.push((done, result));
        true
    }

    /// Wake the pump (at most one wake-up however many answers were queued).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }
}

/// Install an inbox for this thread and return the pump that answers its callers: spawn it on
/// the thread's current-thread runtime before serving (a task of a multi-thread runtime may
/// move between threads, so this is for runtimes of one thread). Journal callers on this
/// thread then get their answers through it. When the pump is dropped (its runtime stops), the
/// thread's callers are answered directly again, and whatever was queued is answered at once.
pub fn pump() -> impl Future<Output = ()> + 'static {
    let inbox = Arc::new(Inbox {
        state: Mutex::new(InboxState {
            ready: Vec::new(),
            closed: false,
        }),
        notify: Notify::new(),
    });
    INBOX.with(|i| *i.borrow_mut() = Some(Arc::clone(&inbox)));
    let guard = Closer(Arc::clone(&inbox));
    async move {
        let _guard = guard;
        let mut ready = Vec::new();
        loop {
            inbox.notify.notified().await;
            std::mem::swap(&mut ready, &mut inbox.state.lock().ready);
            for (done, result) in ready.drain(..) {
                let _ = done.send(result);
            }
        }
    }
}

/// Closes an inbox when its pump goes away.
struct Closer(Arc<Inbox>);

impl Drop for Closer {
    fn drop(&mut self) {
        // `try_with`: the runtime, and this pump with it, may be dropped while the thread's
        // locals are being destroyed.
        let _ = INBOX.try_with(|i| {
            if let Ok(mut slot) = i.try_borrow_mut() {
                if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.0)) {
                    *slot = None;
                }
            }
        });
        let ready = {
            let mut st = self.0.state.lock();
            st.closed = true;
            std::mem::take(&mut st.ready)
        };
        for (done, result) in ready {
            let _ = done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn answers_reach_callers_through_the_pump_and_directly_once_it_is_gone() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inbox = rt.block_on(async {
            let handle = tokio::spawn(pump());
            let inbox = current().expect("the pump installs an inbox");
            // Answers queued from another thread, one wake for all of them.
            let mut rxs = Vec::new();
            let mut txs = Vec::new();
            for _ in 0..100 {
                let (tx, rx) = oneshot::channel();
                txs.push(tx);
                rxs.push(rx);
            }
            let remote = Arc::clone(&inbox);
            std::thread::spawn(move || {
                let mut wake = false;
                for (i, tx) in txs.into_iter().enumerate() {
                    let r = if i % 10 == 0 {
                        Err(StoreError::WriterGone)
                    } else {
                        Ok(())
                    };
                    wake |= remote.queue(tx, r);
                }
                assert!(wake);
                remote.wake();
            })
            .join()
            .unwrap();
            for (i, rx) in rxs.into_iter().enumerate() {
                let r = rx.await.unwrap();
                assert_eq!(r.is_err(), i % 10 == 0, "answer {i}");
            }
            handle.abort();
            let _ = handle.await;
            inbox
        });
        // The pump is gone: the thread has no inbox and a late answer is delivered directly.
        assert!(current().is_none());
        let (tx, mut rx) = oneshot::channel();
        assert!(!inbox.queue(tx, Ok(())));
        assert!(rx.try_recv().unwrap().is_ok());
    }
}
