//! A streaming loader: background workers decode, resize and crop whole batches ahead of the
//! consumer, holding at most `capacity` batches (queued or being loaded) at a time, so memory
//! stays bounded however large the dataset. Batches come out in the order a single thread
//! would produce them, whatever the worker count: the batch plan (which indices, which
//! cursor) is drawn under one lock in sequence, each example's augmentation is keyed by
//! (seed, epoch, index), and the consumer takes batches by sequence number.
//!
//! Unlike [`BatchLoader`](crate::BatchLoader), a failed example is not replaced: its batch
//! comes out as an error naming the example ([`DataError::Example`]), and the stream goes on.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::batch::{Batch, Cursor, LoaderConfig, Sampler, load_example};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::transform::Transform;

/// How far the stream runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// To the end of the current epoch (a finite dataset); the last batch may be short.
    /// Evaluation, reference statistics and cache builds read the data this way.
    OnePass,
    /// Epoch after epoch, every batch full (training).
    Endless,
}

/// Streams transformed batches of a dataset from background workers; see the module doc.
pub struct PrefetchLoader {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    capacity: usize,
}

struct State {
    sampler: Sampler,
    batch_size: usize,
    /// Examples left to plan; `None` for an endless stream.
    remaining: Option<u64>,
    dispatched: u64,
    consumed: u64,
    ready: BTreeMap<u64, Result<Batch, DataError>>,
    peak_held: usize,
    shutdown: bool,
}

/// One batch to load: its sequence number and its (index, cursor) slots.
struct Job {
    seq: u64,
    slots: Vec<(usize, Cursor)>,
    end: Cursor,
}

impl State {
    fn plan_done(&self) -> bool {
        self.remaining == Some(0)
    }

    fn held(&self) -> usize {
        (self.dispatched - self.consumed) as usize
    }

    /// The next batch to load, when the plan has one and the queue has room.
    fn take_job(&mut self, capacity: usize) -> Option<Job> {
        if self.plan_done() || self.held() >= capacity {
            return None;
        }
        let count = self
            .remaining
            .map_or(self.batch_size, |r| (r as usize).min(self.batch_size));
        let slots: Vec<(usize, Cursor)> = (0..count).map(|_| self.sampler.next_index()).collect();
        if let Some(r) = self.remaining.as_mut() {
            *r -= count as u64;
        }
        let seq = self.dispatched;
        self.dispatched += 1;
        self.peak_held = self.peak_held.max(self.held());
        Some(Job {
            seq,
            slots,
            end: self.sampler.cursor(),
        })
    }
}

impl PrefetchLoader {
    /// Starts `config.workers` threads (0: one per core) loading batches of `dataset` from
    /// `cursor`, at most `capacity` batches ahead of the consumer.
    pub fn new<D: Dataset + 'static>(
        dataset: D,
        transform: Transform,
        config: LoaderConfig,
        cursor: Cursor,
        extent: Extent,
        capacity: usize,
    ) -> Result<Self, DataError> {
        check_settings(&dataset, &config, capacity, extent)?;
        let sampler = Sampler::new(dataset.len(), config.seed, config.shuffle, cursor).map_err(
            |e| match e {
                DataError::Empty { .. } => DataError::Empty {
                    dataset: dataset.name(),
                    detail: ": nothing to stream".into(),
                },
                other => other,
            },
        )?;
        let remaining = match extent {
            Extent::OnePass => dataset.len().map(|n| n as u64 - cursor.position),
            Extent::Endless => None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sampler,
                batch_size: config.batch_size,
                remaining,
                dispatched: 0,
                consumed: 0,
                ready: BTreeMap::new(),
                peak_held: 0,
                shutdown: false,
            }),
            changed: Condvar::new(),
            capacity,
        });
        let dataset = Arc::new(dataset);
        let workers = (0..worker_count(config.workers))
            .map(|_| {
                let (shared, dataset) = (shared.clone(), dataset.clone());
                std::thread::spawn(move || work(&shared, &*dataset, &transform, config.seed))
            })
            .collect();
        Ok(PrefetchLoader { shared, workers })
    }

    /// Batches planned and not yet taken by the consumer (queued or being loaded).
    pub fn held(&self) -> usize {
        self.shared.lock().held()
    }

    /// The most batches ever held at once; never more than the capacity.
    pub fn peak_held(&self) -> usize {
        self.shared.lock().peak_held
    }
}

fn worker_count(asked: usize) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

fn check_settings<D: Dataset>(
    dataset: &D,
    config: &LoaderConfig,
    capacity: usize,
    extent: Extent,
) -> Result<(), DataError> {
    if config.batch_size == 0 {
        return Err(DataError::setting(
            "batch_size",
            0,
            "a batch needs at least one example",
        ));
    }
    if capacity == 0 {
        return Err(DataError::setting(
            "prefetch capacity",
            0,
            "must hold at least one batch",
        ));
    }
    if extent == Extent::OnePass && dataset.len().is_none() {
        return Err(DataError::setting(
            "extent",
            "one pass",
            format!("{} is infinite; stream it endlessly", dataset.name()),
        ));
    }
    Ok(())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker: takes the next job when the queue has room, loads it, files the result.
fn work<D: Dataset>(shared: &Shared, dataset: &D, transform: &Transform, seed: u64) {
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.shutdown || state.plan_done() {
                    return;
                }
                if let Some(job) = state.take_job(shared.capacity) {
                    break job;
                }
                state = shared.wait(state);
            }
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            load_batch(dataset, transform, seed, &job)
        }))
        .unwrap_or_else(|_| {
            Err(DataError::Empty {
                dataset: dataset.name(),
                detail: format!(": a loader thread panicked loading batch {}", job.seq),
            })
        });
        shared.lock().ready.insert(job.seq, result);
        shared.changed.notify_all();
    }
}

/// Loads a job's examples in order; the first failure is the batch's error, naming the example.
fn load_batch<D: Dataset>(
    dataset: &D,
    transform: &Transform,
    seed: u64,
    job: &Job,
) -> Result<Batch, DataError> {
    let mut examples = Vec::with_capacity(job.slots.len());
    for &(index, at) in &job.slots {
        let example =
            load_example(dataset, transform, seed, index, at).map_err(|e| DataError::Example {
                dataset: dataset.name(),
                id: dataset
                    .id(index)
                    .unwrap_or_else(|_| format!("index {index}")),
                source: Box::new(e),
            })?;
        examples.push(example);
    }
    Ok(Batch {
        examples,
        indices: job.slots.iter().map(|&(i, _)| i).collect(),
        skipped: Vec::new(),
        start: job.slots[0].1,
        end: job.end,
    })
}

impl Iterator for PrefetchLoader {
    type Item = Result<Batch, DataError>;

    /// The next batch in plan order; `None` after the last batch of a one-pass stream.
    fn next(&mut self) -> Option<Self::Item> {
        let mut state = self.shared.lock();
        loop {
            let seq = state.consumed;
            if let Some(result) = state.ready.remove(&seq) {
                state.consumed += 1;
                drop(state);
                self.shared.changed.notify_all();
                return Some(result);
            }
            if state.plan_done() && state.dispatched == state.consumed {
                return None;
            }
            state = self.shared.wait(state);
        }
    }
}

impl Drop for PrefetchLoader {
    /// Stops the workers (each finishes the batch in hand) and waits for them.
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
