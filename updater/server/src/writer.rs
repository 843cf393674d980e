//! The one thread that writes to the store. The engine decides in memory and queues its writes
//! here; the thread gathers them for up to [`WINDOW`] and commits them in one transaction, so a
//! burst of 10,000 check-ins costs a handful of commits rather than 10,000. Within a batch, a
//! machine's instance row is written once, with its latest state. The thread sleeps while it
//! gathers: queuing a write never wakes it, only a flush (which is then committed at once) or a
//! full queue does. The queue is bounded ([`QUEUE`]): when the store falls behind, the engine
//! waits for it (backpressure) instead of holding an ever longer queue in memory.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError, Write};

/// The most writes committed in one transaction; bounds the time a reader waits for the store.
const MAX_BATCH: usize = 8192;

/// The most writes queued before a writer waits for the store: eight full transactions.
const QUEUE: usize = 8 * MAX_BATCH;

/// How long the thread gathers writes before it commits them: what a crash can lose beyond
/// what was queued, and how stale a reader that does not flush may be.
const WINDOW: Duration = Duration::from_millis(50);

enum Job {
    Write(Write),
    /// Answered once every write queued before it is committed.
    Flush(SyncSender<Result<(), String>>),
}

/// The queue in front of the writer thread, and shared access to the store for reads.
pub struct Writer {
    queue: Mutex<Option<SyncSender<Job>>>,
    store: Arc<Mutex<Box<dyn Store>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to wake it for a flush.
    waker: Option<Thread>,
}

impl Writer {
    pub fn start(store: Box<dyn Store>) -> Self {
        let store = Arc::new(Mutex::new(store));
        let (queue, jobs) = mpsc::sync_channel(QUEUE);
        let thread_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("kiln-server-writer".into())
            .spawn(move || run(&thread_store, &jobs))
            .ok();
        Self {
            queue: Mutex::new(Some(queue)),
            store,
            waker: thread.as_ref().map(|t| t.thread().clone()),
            thread: Mutex::new(thread),
        }
    }

    /// Queues one write; waits while the queue is full. Called with the engine's lock held, so
    /// writes reach the store in the order the engine made them.
    pub fn send(&self, write: Write) {
        if let Some(queue) = lock(&self.queue).as_ref() {
            // A send fails only when the thread has gone (after `stop`); the write is then lost,
            // which `flush` reports.
            if let Err(TrySendError::Full(job)) = queue.try_send(Job::Write(write)) {
                self.wake();
                let _ = queue.send(job);
            }
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
        self.wake();
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

    fn wake(&self) {
        if let Some(thread) = &self.waker {
            thread.unpark();
        }
    }

    /// Commits what is queued and ends the thread.
    pub fn stop(&self) {
        lock(&self.queue).take();
        self.wake();
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
    let mut batch = Batch::default();
    let mut waiting = Vec::new();
    // `recv` ends when every sender is gone; the loop then has nothing left to commit.
    while let Ok(first) = jobs.recv() {
        collect(first, &mut batch, &mut waiting);
        let until = Instant::now() + WINDOW;
        loop {
            let gone = loop {
                if batch.writes.len() >= MAX_BATCH {
                    break false;
                }
                match jobs.try_recv() {
                    Ok(job) => collect(job, &mut batch, &mut waiting),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            let now = Instant::now();
            if gone || !waiting.is_empty() || batch.writes.len() >= MAX_BATCH || now >= until {
                break;
            }
            std::thread::park_timeout(until - now);
        }
        let result = if batch.writes.is_empty() {
            Ok(())
        } else {
            lock(store).apply(&batch.writes).map_err(|e| e.to_string())
        };
        if let Err(err) = &result {
            // There is no caller to hand a failed check-in batch to; the log says what was lost.
            eprintln!(
                "kiln-server: {} writes not stored: {err}",
                batch.writes.len()
            );
        }
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

/// The writes of one transaction, in the order the engine made them, except that a machine's
/// later instance rows replace its first one in place (so the row still comes before that
/// machine's events, and after a delete of it a new row starts).
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    /// (app, machine) → the index of its instance row in `writes`.
    instances: HashMap<(String, String), usize>,
}

impl Batch {
    fn push(&mut self, write: Write) {
        match write {
            Write::Instance(instance) => {
                let key = (instance.app_id.clone(), instance.machine_id.clone());
                match self.instances.get(&key) {
                    Some(&at) => self.writes[at] = Write::Instance(instance),
                    None => {
                        self.instances.insert(key, self.writes.len());
                        self.writes.push(Write::Instance(instance));
                    }
                }
            }
            Write::DeleteInstance { app_id, machine_id } => {
                self.instances.remove(&(app_id.clone(), machine_id.clone()));
                self.writes
                    .push(Write::DeleteInstance { app_id, machine_id });
            }
            other => self.writes.push(other),
        }
    }

    fn clear(&mut self) {
        self.writes.clear();
        self.instances.clear();
    }
}

fn collect(job: Job, batch: &mut Batch, waiting: &mut Vec<SyncSender<Result<(), String>>>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Instance, InstanceEvent, Status};

    fn instance(machine: &str, version: &str) -> Write {
        Write::Instance(Instance {
            machine_id: machine.into(),
            app_id: "app".into(),
            version: version.into(),
            channel: "stable".into(),
            status: Status::Idle,
            target_version: None,
            granted_at: None,
            last_check: Default::default(),
            last_error: None,
            boot_id: None,
            first_seen: Default::default(),
        })
    }

    fn event(machine: &str) -> Write {
        Write::Event(InstanceEvent {
            machine_id: machine.into(),
            app_id: "app".into(),
            at: Default::default(),
            event_type: 3,
            event_result: 1,
            error_code: None,
            description: String::new(),
            version: "1".into(),
            previous_version: None,
        })
    }

    /// (kind, machine, version) of each write, to compare batches.
    fn shape(batch: &Batch) -> Vec<(&'static str, String, String)> {
        batch
            .writes
            .iter()
            .map(|w| match w {
                Write::Instance(i) => ("instance", i.machine_id.clone(), i.version.clone()),
                Write::Event(e) => ("event", e.machine_id.clone(), String::new()),
                Write::DeleteInstance { machine_id, .. } => {
                    ("delete", machine_id.clone(), String::new())
                }
                _ => ("other", String::new(), String::new()),
            })
            .collect()
    }

    #[test]
    fn a_machines_later_rows_replace_its_first_in_place_and_a_delete_starts_anew() {
        let mut batch = Batch::default();
        for w in [
            instance("m1", "1"),
            event("m1"),
            instance("m2", "1"),
            instance("m1", "2"),
            event("m1"),
            Write::DeleteInstance {
                app_id: "app".into(),
                machine_id: "m2".into(),
            },
            instance("m2", "3"),
        ] {
            batch.push(w);
        }
        let s = |k: &'static str, m: &str, v: &str| (k, m.to_owned(), v.to_owned());
        assert_eq!(
            shape(&batch),
            vec![
                s("instance", "m1", "2"),
                s("event", "m1", ""),
                s("instance", "m2", "1"),
                s("event", "m1", ""),
                s("delete", "m2", ""),
                s("instance", "m2", "3"),
            ]
        );
        batch.clear();
        batch.push(instance("m1", "4"));
        assert_eq!(shape(&batch), vec![s("instance", "m1", "4")]);
    }

    /// A store that blocks in `apply` until the gate opens, and counts what it applied.
    struct GatedStore {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        applied: Arc<Mutex<usize>>,
    }

    impl Store for GatedStore {
        fn load(&mut self) -> Result<crate::store::Snapshot, StoreError> {
            Ok(crate::store::Snapshot::default())
        }
        fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
            let (open, changed) = &*self.gate;
            let mut open = lock(open);
            while !*open {
                open = changed.wait(open).unwrap_or_else(|p| p.into_inner());
            }
            *lock(&self.applied) += writes.len();
            Ok(())
        }
        fn events(&mut self, _: &str, _: &str, _: u32) -> Result<Vec<InstanceEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn recent_errors(&mut self, _: &str, _: u32) -> Result<Vec<InstanceEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn describe(&self) -> String {
            "gated".into()
        }
    }

    #[test]
    fn a_store_that_falls_behind_holds_back_the_writers_instead_of_queuing_without_end() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let applied = Arc::new(Mutex::new(0));
        let writer = Arc::new(Writer::start(Box::new(GatedStore {
            gate: Arc::clone(&gate),
            applied: Arc::clone(&applied),
        })));
        // More than the queue and the batch being committed hold.
        let total = QUEUE + 2 * MAX_BATCH + 10;
        let sent = Arc::new(Mutex::new(0usize));
        let sender = {
            let (writer, sent) = (Arc::clone(&writer), Arc::clone(&sent));
            std::thread::spawn(move || {
                for _ in 0..total {
                    writer.send(event("m1"));
                    *lock(&sent) += 1;
                }
            })
        };
        // The store is stuck: the sender fills the queue and then waits.
        let mut last = usize::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = *lock(&sent);
            if now == last {
                break;
            }
            last = now;
        }
        assert!(
            last < total && last <= QUEUE + MAX_BATCH + 1,
            "{last} of {total} writes queued while the store took none"
        );
        assert!(!sender.is_finished());
        *lock(&gate.0) = true;
        gate.1.notify_all();
        sender.join().unwrap();
        writer.flush().unwrap();
        assert_eq!(*lock(&applied), total);
    }
}
