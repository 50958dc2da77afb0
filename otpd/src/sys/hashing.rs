//! Slow hashes a peer can make the daemon compute — argon2id of a
//! recovery-code-shaped answer (19 MiB each), an imported scratch code, an
//! internal-account password — run here, on a few threads of their own,
//! never on tokio's blocking pool (check 38).
//!
//! Why: with the blocking pool (up to 512 threads) 250 concurrent answers
//! from one host took a server from 15 MB to 4.75 GB, and it stayed there:
//! each thread's malloc arena kept its 19 MiB. Here at most [`THREADS`]
//! hashes run at once, so memory stays bounded by their work areas; at
//! most [`QUEUED`] more wait, and an answer beyond that is refused at once
//! as "busy" (nothing checked, nothing counted against the account).
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

/// Hashes computed at once: the host has few cores, and logins need them too.
pub const THREADS: usize = 2;
/// Hashes waiting for a thread; about half a second of work at the
/// default cost, well inside the module's timeout.
pub const QUEUED: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads are all busy and the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// A fixed set of threads and a bounded queue.
pub struct Pool {
    tx: SyncSender<Job>,
}

impl Pool {
    pub fn new(threads: usize, queued: usize) -> Pool {
        let (tx, rx) = sync_channel::<Job>(queued);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("otpd-hash-{i}")).spawn(move || loop {
                // One thread waits on the queue at a time; the others wait for the lock.
                let job = match rx.lock() {
                    Ok(rx) => match rx.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                    Err(_) => return,
                };
                // A job that panics must not take its thread with it: the
                // pool would shrink to nothing, refusing every hash for good.
                // (Its caller sees Busy: the result sender is dropped.)
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start a hashing thread: {e}");
            }
        }
        Pool { tx }
    }

    /// Runs `f` on one of the threads and waits for its result; [`Busy`]
    /// at once when the queue is full (or no thread runs).
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => result.await.map_err(|_| Busy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

/// [`Pool::run`] on the daemon's one pool ([`THREADS`], [`QUEUED`]).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(THREADS, QUEUED)).run(f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// However many ask at once, at most THREADS run and QUEUED wait; the
    /// rest are told Busy without running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_run_and_the_queue_is_bounded() {
        let (running, peak, ran) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let n = THREADS + QUEUED + 20;
        let pool = Arc::new(Pool::new(THREADS, QUEUED));
        let jobs: Vec<_> = (0..n)
            .map(|_| {
                let (running, peak, ran, release) = (running.clone(), peak.clone(), ran.clone(), release_rx.clone());
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        let _ = release.lock().map(|r| r.recv());
                        running.fetch_sub(1, Ordering::SeqCst);
                        ran.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        // Wait until the threads hold jobs and the queue is full.
        while running.load(Ordering::SeqCst) < THREADS {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for _ in 0..n {
            let _ = release_tx.send(());
        }
        let mut busy = 0;
        for j in jobs {
            if j.await.unwrap() == Err(Busy) {
                busy += 1;
            }
        }
        assert_eq!(peak.load(Ordering::SeqCst), THREADS);
        assert_eq!(ran.load(Ordering::SeqCst), n - busy);
        assert!(busy >= n - THREADS - QUEUED, "{busy} of {n} refused");
    }
}
