//! The per-session thread pool and the `parallel_for` the generated code calls.
//!
//! A pool of `threads` runs work on `threads - 1` persistent workers plus the calling thread;
//! no thread is created per run or per loop. Items are handed out in contiguous chunks from an
//! atomic counter, so a late or preempted thread does not hold up the others. Workers spin
//! briefly before sleeping on a condition variable, which keeps the hand-off cheap between the
//! many short loops of one inference without burning a core while the session is idle.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::abi::{DncContext, DncTaskFn};
use crate::error::{Error, Result};

/// The most threads a session may ask for.
pub const MAX_THREADS: usize = 256;
/// Stack of each worker: generated tasks may keep tiles on the stack.
const WORKER_STACK: usize = 8 << 20;
/// Iterations a worker or the caller spins before blocking (tens of microseconds: long enough
/// to bridge the gap between two kernels, short enough not to starve an oversubscribed core).
const SPIN: u32 = 2_000;
/// Chunks per thread. The generated code splits a kernel into few, coarse tasks (about 16), so
/// this makes a chunk one task: a thread preempted in the middle of a chunk (the machine may be
/// shared) then holds up the others by one task at most, for one atomic add per task.
const CHUNKS_PER_THREAD: i64 = 16;

thread_local! {
    /// Set while this thread runs a task: a nested parallel-for then runs inline.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// A raw task context that may cross threads: the ABI makes the task responsible for it.
#[derive(Clone, Copy)]
struct TaskCtx(*const DncContext);
// SAFETY: the pointer is only passed back to the task it came with, whose contract (see
// `abi`) is to be callable from any pool thread concurrently.
unsafe impl Send for TaskCtx {}

#[derive(Clone, Copy)]
struct Job {
    task: DncTaskFn,
    ctx: TaskCtx,
    n: i64,
    chunk: i64,
}

struct State {
    job: Option<Job>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    /// Bumped (under `state`) for each new job; workers spin on it before sleeping.
    generation: AtomicU64,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The next unclaimed item of the current job.
    next: AtomicI64,
    workers: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the state is
        // a plain value that stays consistent, so carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims and runs chunks of `job` until none are left.
    fn run_chunks(&self, job: Job) {
        loop {
            let begin = self.next.fetch_add(job.chunk, Ordering::Relaxed);
            if begin >= job.n {
                return;
            }
            let end = begin.saturating_add(job.chunk).min(job.n);
            // SAFETY: the ABI requires `task` to be callable on any pool thread with its
            // context and any disjoint sub-range of [0, n); the counter makes ranges disjoint.
            unsafe { (job.task)(job.ctx.0, begin, end) };
        }
    }

    fn worker_loop(&self) {
        IN_TASK.with(|t| t.set(true));
        let mut seen = 0u64;
        loop {
            let mut spins = 0;
            while self.generation.load(Ordering::Acquire) == seen && spins < SPIN {
                std::hint::spin_loop();
                spins += 1;
            }
            let job = {
                let mut st = self.lock();
                while self.generation.load(Ordering::Acquire) == seen && !st.shutdown {
                    st = self.done_wait(&self.wake, st);
                }
                if st.shutdown {
                    return;
                }
                seen = self.generation.load(Ordering::Acquire);
                st.job
            };
            if let Some(job) = job {
                self.run_chunks(job);
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Take the lock so the notification cannot fall between the caller's check and
                // its wait.
                let _st = self.lock();
                self.done.notify_all();
            }
        }
    }

    fn done_wait<'a>(&self, cv: &Condvar, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        cv.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on every thread and returns when all chunks are done.
    fn dispatch(&self, job: Job) {
        self.next.store(0, Ordering::Relaxed);
        self.pending.store(self.workers, Ordering::Relaxed);
        {
            let mut st = self.lock();
            st.job = Some(job);
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_all();
        }
        IN_TASK.with(|t| t.set(true));
        self.run_chunks(job);
        IN_TASK.with(|t| t.set(false));
        let mut spins = 0;
        while self.pending.load(Ordering::Acquire) != 0 && spins < SPIN {
            std::hint::spin_loop();
            spins += 1;
        }
        let mut st = self.lock();
        while self.pending.load(Ordering::Acquire) != 0 {
            st = self.done_wait(&self.done, st);
        }
        st.job = None;
    }
}

/// A session's thread pool.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller's included); 0 means one per available
    /// core.
    pub fn new(threads: usize) -> Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t if t > MAX_THREADS => {
                return Err(Error::InvalidArgument(format!(
                    "{t} threads requested, at most {MAX_THREADS} supported"
                )))
            }
            t => t,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                job: None,
                shutdown: false,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            next: AtomicI64::new(0),
            workers: threads - 1,
        });
        let mut pool = ThreadPool {
            shared,
            handles: Vec::with_capacity(threads - 1),
        };
        for i in 0..threads - 1 {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("dnc-worker-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || shared.worker_loop())
                .map_err(Error::ThreadPool)?; // Drop of `pool` stops the workers started so far.
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// Threads in the pool, the caller's included.
    pub fn threads(&self) -> usize {
        self.shared.workers + 1
    }

    /// The opaque pool pointer handed to the generated code with [`dnc_parallel_for`]. Valid
    /// while the pool lives.
    pub fn as_abi_ptr(&self) -> *mut c_void {
        Arc::as_ptr(&self.shared) as *mut c_void
    }

    /// Runs `task(ctx, begin, end)` over `[0, n)`; see [`crate::abi`] for the contract.
    /// (The generated code reaches the pool through [`dnc_parallel_for`]; this is for tests.)
    ///
    /// # Safety
    /// `task` must be safe to call with `ctx` on any thread, concurrently, with disjoint ranges.
    #[cfg(test)]
    pub unsafe fn parallel_for(&mut self, task: DncTaskFn, ctx: *const DncContext, n: i64) {
        run(&self.shared, task, ctx, n);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for h in self.handles.drain(..) {
            // A worker only ends by returning; a join error would mean a panic in the pool's
            // own code, already reported by the panic hook.
            let _ = h.join();
        }
    }
}

fn run(shared: &Shared, task: DncTaskFn, ctx: *const DncContext, n: i64) {
    if n <= 0 {
        return;
    }
    if shared.workers == 0 || n == 1 || IN_TASK.with(|t| t.get()) {
        // SAFETY: the caller upholds the task contract; one range covering everything.
        unsafe { task(ctx, 0, n) };
        return;
    }
    let threads = shared.workers as i64 + 1;
    let pieces = threads.saturating_mul(CHUNKS_PER_THREAD);
    let chunk = (n / pieces + i64::from(n % pieces != 0)).max(1);
    shared.dispatch(Job {
        task,
        ctx: TaskCtx(ctx),
        n,
        chunk,
    });
}

/// The parallel-for handed to generated code as `DncContext::parallel_for`.
///
/// # Safety
/// `pool` must come from [`ThreadPool::as_abi_ptr`] of a live pool that no other thread is
/// dispatching on, and `task`/`task_ctx` must follow the contract in [`crate::abi`].
pub unsafe extern "C" fn dnc_parallel_for(
    pool: *mut c_void,
    task: DncTaskFn,
    task_ctx: *const DncContext,
    n: i64,
) {
    if n <= 0 {
        return;
    }
    if pool.is_null() {
        // Defensive: run serially rather than dereference null.
        // SAFETY: the caller upholds the task contract.
        unsafe { task(task_ctx, 0, n) };
        return;
    }
    // SAFETY: `pool` points to the `Shared` of a live pool (caller's contract).
    let shared = unsafe { &*(pool as *const Shared) };
    run(shared, task, task_ctx, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU32;
    use std::time::{Duration, Instant};

    unsafe extern "C" fn count(ctx: *const DncContext, begin: i64, end: i64) {
        // SAFETY: the tests pass a pointer to a live slice of counters at least `end` long.
        let hits = unsafe { &*(ctx as *const Vec<AtomicU32>) };
        for i in begin..end {
            hits[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn run_count(pool: &mut ThreadPool, n: usize) {
        let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        // SAFETY: `count` only touches `hits`, atomically.
        unsafe { pool.parallel_for(count, (&hits as *const Vec<AtomicU32>).cast(), n as i64) };
        for (i, h) in hits.iter().enumerate() {
            assert_eq!(h.load(Ordering::Relaxed), 1, "item {i} of {n}");
        }
    }

    #[test]
    fn every_item_exactly_once() {
        for threads in [1, 2, 3, 8] {
            let mut pool = ThreadPool::new(threads).expect("pool");
            assert_eq!(pool.threads(), threads);
            for n in [0, 1, 2, 3, 7, 16, 17, 100, 1000] {
                run_count(&mut pool, n);
            }
        }
    }

    #[test]
    fn many_short_loops_reuse_the_pool() {
        let mut pool = ThreadPool::new(2).expect("pool");
        for i in 0..5000 {
            run_count(&mut pool, 1 + i % 37);
        }
    }

    struct Rendezvous {
        arrived: AtomicU32,
        met: AtomicU32,
    }

    /// Each call waits (bounded) until another call is running at the same time.
    unsafe extern "C" fn meet(ctx: *const DncContext, _begin: i64, _end: i64) {
        // SAFETY: the test passes a live Rendezvous.
        let r = unsafe { &*(ctx as *const Rendezvous) };
        r.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.arrived.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        if r.arrived.load(Ordering::SeqCst) >= 2 {
            r.met.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn two_threads_really_run_concurrently() {
        let mut pool = ThreadPool::new(2).expect("pool");
        let r = Rendezvous {
            arrived: AtomicU32::new(0),
            met: AtomicU32::new(0),
        };
        // SAFETY: `meet` only touches `r`, atomically.
        unsafe { pool.parallel_for(meet, (&r as *const Rendezvous).cast(), 2) };
        assert_eq!(
            r.met.load(Ordering::SeqCst),
            2,
            "the two items did not overlap in time"
        );
    }

    struct Nested {
        pool: *mut c_void,
        hits: Vec<AtomicU32>,
    }

    unsafe extern "C" fn inner(ctx: *const DncContext, begin: i64, end: i64) {
        // SAFETY: the test passes a live Nested.
        let n = unsafe { &*(ctx as *const Nested) };
        for i in begin..end {
            n.hits[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    unsafe extern "C" fn outer(ctx: *const DncContext, begin: i64, end: i64) {
        // SAFETY: the test passes a live Nested.
        let n = unsafe { &*(ctx as *const Nested) };
        for _ in begin..end {
            // SAFETY: a nested call runs inline on this thread (module contract).
            unsafe { dnc_parallel_for(n.pool, inner, ctx, n.hits.len() as i64) };
        }
    }

    #[test]
    fn nested_parallel_for_runs_inline() {
        let mut pool = ThreadPool::new(2).expect("pool");
        let nested = Nested {
            pool: pool.as_abi_ptr(),
            hits: (0..50).map(|_| AtomicU32::new(0)).collect(),
        };
        // SAFETY: `outer` and `inner` only touch `nested`, atomically.
        unsafe { pool.parallel_for(outer, (&nested as *const Nested).cast(), 8) };
        assert!(nested.hits.iter().all(|h| h.load(Ordering::Relaxed) == 8));
    }

    unsafe extern "C" fn record_thread(ctx: *const DncContext, _begin: i64, _end: i64) {
        // SAFETY: the test passes a live Mutex<HashSet>.
        let ids = unsafe { &*(ctx as *const Mutex<HashSet<std::thread::ThreadId>>) };
        ids.lock()
            .expect("lock")
            .insert(std::thread::current().id());
    }

    #[test]
    fn threads_are_persistent() {
        let mut pool = ThreadPool::new(3).expect("pool");
        let ids: Mutex<HashSet<std::thread::ThreadId>> = Mutex::new(HashSet::new());
        for _ in 0..200 {
            // SAFETY: `record_thread` only touches `ids`, under its lock.
            unsafe { pool.parallel_for(record_thread, (&ids as *const Mutex<_>).cast(), 64) };
        }
        let seen = ids.lock().expect("lock").len();
        assert!(
            (1..=3).contains(&seen),
            "{seen} distinct threads for a pool of 3"
        );
    }

    #[test]
    fn absurd_thread_counts_are_refused() {
        let e = ThreadPool::new(MAX_THREADS + 1).expect_err("must fail");
        assert!(e.to_string().contains("threads"), "{e}");
        assert!(ThreadPool::new(0).expect("auto").threads() >= 1);
    }
}
