//! The one thread that writes to the store. The engine decides in memory and queues its writes
//! here; the thread commits whatever has queued up in one transaction, so a burst of 10,000
//! check-ins costs a handful of commits rather than 10,000.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::store::{Store, StoreError, Write};

/// The most writes committed in one transaction; bounds the time a reader waits for the store.
const MAX_BATCH: usize = 8192;

enum Job {
    Write(Write),
    /// Answered once every write queued before it is committed.
    Flush(SyncSender<Result<(), String>>),
}

/// The queue in front of the writer thread, and shared access to the store for reads.
pub struct Writer {
    queue: Mutex<Option<Sender<Job>>>,
    store: Arc<Mutex<Box<dyn Store>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub fn start(store: Box<dyn Store>) -> Self {
        let store = Arc::new(Mutex::new(store));
        let (queue, jobs) = mpsc::channel();
        let thread_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("kiln-server-writer".into())
            .spawn(move || run(&thread_store, &jobs))
            .ok();
        Self {
            queue: Mutex::new(Some(queue)),
            store,
            thread: Mutex::new(thread),
        }
    }

    /// Queues one write. Called with the engine's lock held, so writes reach the store in the
    /// order the engine made them.
    pub fn send(&self, write: Write) {
        if let Some(queue) = lock(&self.queue).as_ref() {
            // A send fails only when the thread has gone (after `stop`); the write is then lost,
            // which `flush` reports.
            let _ = queue.send(Job::Write(write));
        }
    }

    /// Waits until everything queued so far is committed.
    pub fn flush(&self) -> Result<(), String> {
        let (done, wait) = mpsc::sync_channel(1);
        {
            let queue = lock(&self.queue);
            let queue = queue.as_ref().ok_or("the store writer has stopped")?;
            queue
                .send(Job::Flush(done))
                .map_err(|_| "the store writer has stopped".to_owned())?;
        }
        wait.recv()
            .map_err(|_| "the store writer stopped before committing".to_owned())?
    }

    /// Runs `read` on the store after committing what is queued, so it sees every write.
    pub fn read<T>(
        &self,
        read: impl FnOnce(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, String> {
        self.flush()?;
        let mut store = lock(&self.store);
        read(store.as_mut()).map_err(|e| e.to_string())
    }

    /// Commits what is queued and ends the thread.
    pub fn stop(&self) {
        lock(&self.queue).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(store: &Mutex<Box<dyn Store>>, jobs: &Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut waiting = Vec::new();
    // `recv` ends when every sender is gone; the loop then has nothing left to commit.
    while let Ok(first) = jobs.recv() {
        collect(first, &mut batch, &mut waiting);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => collect(job, &mut batch, &mut waiting),
                Err(_) => break,
            }
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            lock(store).apply(&batch).map_err(|e| e.to_string())
        };
        if let Err(err) = &result {
            // There is no caller to hand a failed check-in batch to; the log says what was lost.
            eprintln!("kiln-server: {} writes not stored: {err}", batch.len());
        }
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

fn collect(job: Job, batch: &mut Vec<Write>, waiting: &mut Vec<SyncSender<Result<(), String>>>) {
    match job {
        Job::Write(write) => batch.push(write),
        Job::Flush(done) => waiting.push(done),
    }
}

/// A poisoned lock means a thread panicked mid-update; the data it guards is still the last
/// consistent state the engine wrote, so serving continues.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
