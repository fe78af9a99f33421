//! Journal traffic of a worker thread, batched both ways.
//!
//! **Answers.**
//! A caller of [`Journal::write`](crate::Journal::write) waits on a oneshot that the log writer
//! answers once the caller's batch is synced. Answered from the writer thread, each answer wakes
//! the caller's runtime from outside: for a current-thread runtime that is an `eventfd` write by
//! the writer and a wake-up of the runtime's thread, per request. A thread that runs [`pump`]
//! instead receives its callers' answers together: the writer queues them in the thread's inbox
//! and wakes the pump once per batch, and the pump answers each on the callers' own thread, where
//! waking a task of the same runtime is a push onto its run queue.
//!
//! **Submissions.** Sent one by one, each job a request makes would wake the log writer when it
//! is idle: a futex wake-up, and on a busy box a preemption of the worker, per request, with
//! batches of one or two. A thread that runs [`pump`] queues its jobs in an outbox instead; the
//! first job queued wakes the pump's flusher, a task of the same runtime, which runs after the
//! tasks that were already ready (the run queue is first in, first out) and sends everything
//! they queued as one message. Jobs wait for no timer: at most until the ready tasks of this
//! round have run.

use std::cell::RefCell;
use std::future::Future;
use std::sync::{mpsc, Arc};
use std::task::Waker;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::journal::{Job, Msg, StoreError};

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

/// Jobs queued on one thread, per journal, until its flusher runs.
struct Outbox {
    /// The pump's inbox (address), whose closing removes this outbox.
    owner: usize,
    queues: Vec<Pending>,
    /// The flusher task, woken by the first job queued after a flush.
    flusher: Option<Waker>,
}

/// One journal's queued jobs.
struct Pending {
    /// Identifies the journal (its handles share it).
    journal: usize,
    to: mpsc::Sender<Msg>,
    jobs: Vec<Job>,
    /// Their log records, encoded here (see `Job::encode_into`).
    frames: Vec<u8>,
}

thread_local! {
    static INBOX: RefCell<Option<Arc<Inbox>>> = const { RefCell::new(None) };
    static OUTBOX: RefCell<Option<Outbox>> = const { RefCell::new(None) };
}

/// Queue `job` for the journal `journal` (sending on `to`) in this thread's outbox; the job
/// comes back when the thread has none (no pump runs here), to be sent directly.
pub(crate) fn submit(journal: usize, to: &mpsc::Sender<Msg>, job: Job) -> Result<(), Job> {
    let mut job = Some(job);
    let _ = OUTBOX.try_with(|o| {
        let Ok(mut slot) = o.try_borrow_mut() else {
            return;
        };
        let Some(outbox) = slot.as_mut() else {
            return;
        };
        let Some(j) = job.take() else {
            return;
        };
        let was_empty = outbox.queues.is_empty();
        let i = match outbox.queues.iter().position(|p| p.journal == journal) {
            Some(i) => i,
            None => {
                outbox.queues.push(Pending {
                    journal,
                    to: to.clone(),
                    jobs: Vec::with_capacity(8),
                    frames: Vec::with_capacity(1024),
                });
                outbox.queues.len() - 1
            }
        };
        let p = &mut outbox.queues[i];
        p.jobs.push(j.encode_into(&mut p.frames));
        if was_empty {
            if let Some(w) = &outbox.flusher {
                w.wake_by_ref();
            }
        }
    });
    match job {
        None => Ok(()),
        Some(job) => Err(job),
    }
}

/// Send every queued job, one message per journal (and forget the journals: a later one may
/// reuse an address).
fn flush(outbox: &mut Outbox) {
    for p in outbox.queues.drain(..) {
        if p.jobs.is_empty() {
            continue;
        }
        let msg = Msg::Many {
            jobs: p.jobs,
            frames: p.frames,
        };
        if p.to.send(msg).is_err() {
            // The writer is gone: callers that wait see their answer dropped (`WriterGone`).
            tracing::error!("journal writer stopped; queued records could not be sent");
        }
    }
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
    OUTBOX.with_borrow_mut(|o| {
        if let Some(old) = o.as_mut() {
            flush(old);
        }
        *o = Some(Outbox {
            owner: Arc::as_ptr(&inbox) as usize,
            queues: Vec::new(),
            flusher: None,
        });
    });
    let guard = Closer(Arc::clone(&inbox));
    async move {
        let _guard = guard;
        let answers = async {
            let mut ready = Vec::new();
            loop {
                inbox.notify.notified().await;
                std::mem::swap(&mut ready, &mut inbox.state.lock().ready);
                for (done, result) in ready.drain(..) {
                    let _ = done.send(result);
                }
            }
        };
        let mut answers = std::pin::pin!(answers);
        std::future::poll_fn(|cx| {
            // Submissions: send what the tasks run since the last poll queued; the next job
            // queued wakes this task again.
            let _ = OUTBOX.try_with(|o| {
                if let Ok(mut slot) = o.try_borrow_mut() {
                    if let Some(outbox) = slot.as_mut() {
                        flush(outbox);
                        if !outbox
                            .flusher
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            outbox.flusher = Some(cx.waker().clone());
                        }
                    }
                }
            });
            answers.as_mut().poll(cx)
        })
        .await
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
        // Jobs still queued are sent now, and later ones go directly.
        let _ = OUTBOX.try_with(|o| {
            if let Ok(mut slot) = o.try_borrow_mut() {
                if slot
                    .as_ref()
                    .is_some_and(|b| b.owner == Arc::as_ptr(&self.0) as usize)
                {
                    if let Some(mut outbox) = slot.take() {
                        flush(&mut outbox);
                    }
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

    fn names(msgs: Vec<Msg>) -> Vec<Vec<String>> {
        msgs.into_iter()
            .map(|m| match m {
                Msg::One(j) => vec![j.test_name(&[])],
                Msg::Many { jobs, frames } => jobs.iter().map(|j| j.test_name(&frames)).collect(),
            })
            .collect()
    }

    #[test]
    fn jobs_queued_in_one_round_reach_the_writer_as_one_message_and_none_is_lost_at_stop() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel::<Msg>();
        // Without a pump, a job is handed back to be sent directly.
        let back = submit(7, &tx, Job::for_test("direct")).unwrap_err();
        assert_eq!(back.test_name(&[]), "direct");
        rt.block_on(async {
            let pump = tokio::spawn(pump());
            tokio::task::yield_now().await;
            // Ten tasks ready in the same round, each queuing one job.
            let tasks: Vec<_> = (0..10)
                .map(|i| {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        assert!(submit(7, &tx, Job::for_test(&format!("r{i}"))).is_ok());
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let mut got = Vec::new();
            for _ in 0..20 {
                got.extend(rx.try_iter());
                if !got.is_empty() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let want: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
            assert_eq!(names(got), vec![want], "one message, in order");
            // A job still queued when the pump stops is sent as it goes.
            assert!(submit(7, &tx, Job::for_test("last")).is_ok());
            pump.abort();
            let _ = pump.await;
            assert_eq!(
                names(rx.try_iter().collect()),
                vec![vec!["last".to_string()]]
            );
            // And afterwards jobs are handed back again.
            assert!(submit(7, &tx, Job::for_test("after")).is_err());
        });
    }

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
