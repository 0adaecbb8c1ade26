//! The per-session thread pool and the `parallel_for` the generated code calls.
//!
//! A pool of `threads` runs work on `threads - 1` persistent workers plus the calling thread;
//! no thread is created per run or per loop.
//!
//! Items are split into one contiguous *home range* per thread, claimed chunk by chunk from a
//! counter per range; a thread that finishes its own range takes chunks from the others', so a
//! late or preempted thread does not hold up the rest. Home ranges give cache affinity: the
//! generated kernels number their tasks in pixel order, so consecutive kernels of a dense block
//! send the same pixels to the same core, whose L2 still holds what the previous kernel wrote
//! there (DenseNet-BC's 32x32 block buffer is 0.9 MB: too big for one core's L2, not for two).
//! Claims are also uncontended, unlike one counter shared by every thread.
//!
//! One inference is a hundred or more short loops (a DenseNet-BC-100 kernel at batch 1 lasts
//! 10–150 µs), so the hand-off between loops is lock-free: the caller publishes the job and
//! bumps a generation counter, workers spinning on the counter pick it up, and the caller
//! spins on a pending-workers counter for the end. The mutex and condition variables are only
//! touched when a thread has given up spinning and sleeps (the session is idle, or the
//! machine is oversubscribed), so an idle session does not burn a core.
//!
//! A worker never shares a core with the caller it works for ([`apart`]). Woken from its sleep
//! by the caller, Linux places a worker on the caller's CPU (the wake-up is affine), and its
//! load balancer leaves two busy threads together for as long as they keep running: cache-hot
//! tasks are not migrated. The two halves of every loop then take turns on one core while the
//! other idles. A fresh process that ran DenseNet-BC-100 twenty times did so on one core
//! nearly throughout (3.3–3.7 ms a run instead of 1.5). So the caller writes its CPU into each
//! job, and a worker that finds itself there moves off it before it runs its chunks.

use std::cell::{Cell, UnsafeCell};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
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
/// Of the `SPIN` iterations, those that only pause the core (a few microseconds), before
/// the rest yield it.
const SPIN_PAUSES: u32 = 256;
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
    /// The CPU the caller dispatched from ([`apart::current_cpu`]), where known.
    caller_cpu: Option<usize>,
}

/// State shared by the caller and the workers.
///
/// The protocol, per job: the caller resets `next` and `pending`, writes `job`, then bumps
/// `generation` (SeqCst, so it also publishes the first three). Every worker takes part in
/// every generation exactly once: it waits for `generation` to move past the one it last
/// served, reads `job`, runs chunks, and decrements `pending`. The caller returns only once
/// `pending` is 0, so it never rewrites `job` or `next` while a worker may still read them.
///
/// Sleeping without lost wake-ups: a worker that stops spinning increments `sleepers` under
/// `lock` and re-reads `generation` before waiting on `wake`; the caller bumps `generation`
/// and then reads `sleepers`, notifying under `lock` when it is non-zero. All four accesses
/// are SeqCst, so either the worker sees the new generation or the caller sees the sleeper.
/// The caller's wait for `pending` mirrors this with `caller_sleeping` and `done`.
///
/// The three counters every thread hits live on separate cache lines: threads spinning on
/// `generation` or `pending` must not steal the line of a range counter from a thread claiming
/// items.
struct Shared {
    job: UnsafeCell<Option<Job>>,
    generation: Padded<AtomicU64>,
    /// Workers still running the current job.
    pending: Padded<AtomicUsize>,
    /// Per thread (the caller is 0, worker `i` is `i + 1`): the next unclaimed item of its
    /// home range of the current job (see [`home_range`]).
    next: Box<[Padded<AtomicI64>]>,
    shutdown: AtomicBool,
    /// Workers blocked, or about to block, on `wake`.
    sleepers: AtomicUsize,
    /// The caller is blocked, or about to block, on `done`.
    caller_sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    done: Condvar,
    workers: usize,
    /// The workers' thread ids, as each starts (tests move them between CPUs).
    #[cfg(all(test, target_os = "linux"))]
    worker_tids: Mutex<Vec<libc::pid_t>>,
}

/// A value alone on its cache line (128 bytes: the line and its prefetch pair).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: `job` is written only by the dispatching caller while no worker reads it, and read
// by workers only after the generation bump that published it (see the protocol above); every
// other field is atomic or a lock.
unsafe impl Sync for Shared {}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // A poisoned lock only means another thread panicked while holding it; it guards no
        // data, so carry on.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, cv: &Condvar, g: MutexGuard<'a, ()>) -> MutexGuard<'a, ()> {
        cv.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    /// Claims and runs chunks of `job` until none are left: thread `me`'s home range first,
    /// then the others' in turn.
    fn run_chunks(&self, job: Job, me: usize) {
        let threads = self.next.len();
        for k in 0..threads {
            let t = (me + k) % threads;
            let (_, hi) = home_range(job.n, threads, t);
            loop {
                let begin = self.next[t].fetch_add(job.chunk, Ordering::Relaxed);
                if begin >= hi {
                    break;
                }
                let end = begin.saturating_add(job.chunk).min(hi);
                // SAFETY: the ABI requires `task` to be callable on any pool thread with its
                // context and any disjoint sub-range of [0, n); each range's counter makes the
                // chunks disjoint, and the ranges partition [0, n).
                unsafe { (job.task)(job.ctx.0, begin, end) };
            }
        }
    }

    fn worker_loop(&self, me: usize) {
        #[cfg(all(test, target_os = "linux"))]
        self.worker_tids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            // SAFETY: no arguments.
            .push(unsafe { libc::gettid() });
        IN_TASK.with(|t| t.set(true));
        let mut seen = 0u64;
        loop {
            let mut spins = 0;
            while self.generation.load(Ordering::Acquire) == seen
                && spins < SPIN
                && !self.shutdown.load(Ordering::Relaxed)
            {
                backoff(spins);
                spins += 1;
            }
            if self.generation.load(Ordering::SeqCst) == seen {
                let mut g = self.lock();
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                while self.generation.load(Ordering::SeqCst) == seen
                    && !self.shutdown.load(Ordering::SeqCst)
                {
                    g = self.wait(&self.wake, g);
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            seen = self.generation.load(Ordering::Acquire);
            // SAFETY: published by the generation bump just observed; the caller does not
            // write it again before this worker decrements `pending` (protocol above).
            if let Some(job) = unsafe { *self.job.get() } {
                if let Some(cpu) = job.caller_cpu {
                    let _ = apart::move_off(cpu);
                }
                self.run_chunks(job, me);
            }
            if self.pending.fetch_sub(1, Ordering::SeqCst) == 1
                && self.caller_sleeping.load(Ordering::SeqCst)
            {
                let _g = self.lock();
                self.done.notify_all();
            }
        }
    }

    /// Runs `job` on every thread and returns when all chunks are done.
    fn dispatch(&self, job: Job) {
        for (t, next) in self.next.iter().enumerate() {
            next.store(home_range(job.n, self.next.len(), t).0, Ordering::Relaxed);
        }
        self.pending.store(self.workers, Ordering::Relaxed);
        // SAFETY: no worker reads `job` now: all finished the previous generation (the last
        // dispatch waited for `pending == 0`) and none can start this one before the bump.
        unsafe { *self.job.get() = Some(job) };
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock();
            self.wake.notify_all();
        }
        IN_TASK.with(|t| t.set(true));
        self.run_chunks(job, 0);
        IN_TASK.with(|t| t.set(false));
        let mut spins = 0;
        while self.pending.load(Ordering::Acquire) != 0 && spins < SPIN {
            backoff(spins);
            spins += 1;
        }
        if self.pending.load(Ordering::SeqCst) != 0 {
            let mut g = self.lock();
            self.caller_sleeping.store(true, Ordering::SeqCst);
            while self.pending.load(Ordering::SeqCst) != 0 {
                g = self.wait(&self.done, g);
            }
            self.caller_sleeping.store(false, Ordering::SeqCst);
        }
    }
}

/// One wait of a spinning thread: a pause at first, then yields of the core, so that a thread
/// waiting for one that has been preempted (more threads than free cores: a loaded machine,
/// or a session with more threads than cores) lets it run instead of burning its time slice.
fn backoff(spins: u32) {
    if spins < SPIN_PAUSES {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Thread `t`'s home range `[lo, hi)` of `n` items split between `threads`: contiguous, in
/// thread order, sizes differing by at most one.
fn home_range(n: i64, threads: usize, t: usize) -> (i64, i64) {
    let (threads, t) = (threads as i128, t as i128);
    let at = |t: i128| (i128::from(n) * t / threads) as i64;
    (at(t), at(t + 1))
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
            job: UnsafeCell::new(None),
            generation: Padded(AtomicU64::new(0)),
            pending: Padded(AtomicUsize::new(0)),
            next: (0..threads).map(|_| Padded(AtomicI64::new(0))).collect(),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            done: Condvar::new(),
            workers: threads - 1,
            #[cfg(all(test, target_os = "linux"))]
            worker_tids: Mutex::new(Vec::new()),
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
                .spawn(move || shared.worker_loop(i + 1))
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
        self.shared.shutdown.store(true, Ordering::SeqCst);
        drop(self.shared.lock());
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
        caller_cpu: apart::current_cpu(),
    });
}

/// Keeping a worker off the caller's CPU (see the module docs).
#[cfg(target_os = "linux")]
mod apart {
    /// The CPU this thread runs on (`sched_getcpu`: a vDSO call, tens of nanoseconds).
    pub(super) fn current_cpu() -> Option<usize> {
        // SAFETY: no arguments, no memory.
        usize::try_from(unsafe { libc::sched_getcpu() }).ok()
    }

    /// Moves this thread off `cpu` if it runs there and may run elsewhere: its affinity
    /// without `cpu` for one `sched_setaffinity`, which migrates it at once, then its own
    /// affinity again, which leaves it where it is now. Nothing where the thread is elsewhere
    /// already (one `sched_getcpu`), where `cpu` is all it may use, or where a call fails.
    /// Returns the CPU it moved to (read while `cpu` was still excluded).
    pub(super) fn move_off(cpu: usize) -> Option<usize> {
        if current_cpu() != Some(cpu) {
            return None;
        }
        let own = affinity()?;
        let mut elsewhere = own;
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return None;
        }
        // SAFETY: `cpu` is below the set's capacity (checked above).
        unsafe { libc::CPU_CLR(cpu, &mut elsewhere) };
        // SAFETY: reads a valid set.
        if unsafe { libc::CPU_COUNT(&elsewhere) } == 0 || !set_affinity(&elsewhere) {
            return None;
        }
        let moved = current_cpu();
        set_affinity(&own);
        moved
    }

    /// This thread's CPU affinity.
    pub(super) fn affinity() -> Option<libc::cpu_set_t> {
        // SAFETY: a cpu_set_t is plain bits; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `set` is a valid cpu_set_t of `size` bytes; pid 0 is this thread.
        (unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0).then_some(set)
    }

    /// Sets this thread's CPU affinity; whether it took.
    pub(super) fn set_affinity(set: &libc::cpu_set_t) -> bool {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: a valid set of `size` bytes; pid 0 is this thread.
        unsafe { libc::sched_setaffinity(0, size, set) == 0 }
    }
}

/// Elsewhere the scheduler decides alone.
#[cfg(not(target_os = "linux"))]
mod apart {
    pub(super) fn current_cpu() -> Option<usize> {
        None
    }

    pub(super) fn move_off(_cpu: usize) -> Option<usize> {
        None
    }
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

    /// The CPUs this thread may run on, in order.
    #[cfg(target_os = "linux")]
    fn allowed_cpus() -> Vec<usize> {
        let set = apart::affinity().expect("sched_getaffinity");
        let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: every index is below the set's capacity.
        (0..capacity)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    /// The CPUs this process may use where there are 2 or more; else `None`, said on stderr
    /// (the test skips).
    #[cfg(target_os = "linux")]
    fn two_cpus_or_more() -> Option<Vec<usize>> {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            eprintln!(
                "skipped: this process may use {} CPU(s), the test needs 2",
                cpus.len()
            );
            return None;
        }
        Some(cpus)
    }

    /// This thread pinned to `cpu` (and running there once this returns).
    #[cfg(target_os = "linux")]
    fn pin(cpu: usize) {
        // SAFETY: a cpu_set_t is plain bits; `cpu` is an allowed CPU, below the capacity.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut one) };
        assert!(apart::set_affinity(&one), "pin to CPU {cpu}");
        assert_eq!(apart::current_cpu(), Some(cpu));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_thread_moves_off_a_cpu_and_keeps_its_affinity() {
        let Some(cpus) = two_cpus_or_more() else {
            return;
        };
        std::thread::spawn(move || {
            let own = apart::affinity().expect("affinity");
            pin(cpus[0]);
            // Allowed everywhere again, but still on `cpus[0]` (it has no reason to move).
            assert!(apart::set_affinity(&own));
            if apart::current_cpu() != Some(cpus[0]) {
                eprintln!("skipped: the scheduler moved the thread first");
                return;
            }
            let moved = apart::move_off(cpus[0]).expect("moved");
            assert_ne!(moved, cpus[0]);
            assert!(cpus.contains(&moved), "{moved} not in {cpus:?}");
            let after = apart::affinity().expect("affinity");
            // SAFETY: reads of valid sets.
            assert!(
                unsafe { libc::CPU_EQUAL(&after, &own) },
                "affinity not restored"
            );
            // Already elsewhere: nothing to do.
            assert_eq!(apart::move_off(cpus[0]), None);
        })
        .join()
        .expect("test thread");
    }

    /// Records the CPU of each item's thread: `(cpu + 1) << 32 | worker` per item, where
    /// `worker` says whether a pool worker ran it (not the test thread).
    unsafe extern "C" fn record_cpu(ctx: *const DncContext, begin: i64, end: i64) {
        // SAFETY: the test passes a live slice of counters at least `end` long.
        let cpus = unsafe { &*(ctx as *const Vec<AtomicU64>) };
        let worker = u64::from(
            std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("dnc-worker")),
        );
        for i in begin..end {
            // Long enough that both threads claim items.
            let until = Instant::now() + Duration::from_micros(20);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            let cpu = apart::current_cpu().map_or(0, |c| c as u64 + 1);
            cpus[i as usize].store(cpu << 32 | worker, Ordering::Relaxed);
        }
    }

    /// Sets thread `tid`'s affinity to `set`.
    #[cfg(target_os = "linux")]
    fn set_thread_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: a valid set of `size` bytes; `tid` is a live thread of this process.
        assert_eq!(
            unsafe { libc::sched_setaffinity(tid, size, set) },
            0,
            "affinity of {tid}"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn workers_run_off_the_callers_cpu() {
        let Some(cpus) = two_cpus_or_more() else {
            return;
        };
        std::thread::spawn(move || {
            let own = apart::affinity().expect("affinity");
            let mut pool = ThreadPool::new(2).expect("pool");
            let tid = loop {
                let tids = pool.shared.worker_tids.lock().expect("tids").clone();
                if let Some(&t) = tids.first() {
                    break t;
                }
                std::thread::yield_now();
            };
            // The caller and the worker both on `cpus[0]`, as Linux leaves them after waking
            // the worker there: pinned together for one job, then the worker allowed
            // everywhere again while it still runs there (spinning for the next job).
            pin(cpus[0]);
            // SAFETY: a cpu_set_t is plain bits; `cpus[0]` is below its capacity.
            let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(cpus[0], &mut one) };
            set_thread_affinity(tid, &one);
            run_count(&mut pool, 64);
            set_thread_affinity(tid, &own);
            let mut worker_items = 0;
            for _ in 0..20 {
                let n = 32;
                let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
                // SAFETY: `record_cpu` only touches `hits`, atomically.
                unsafe {
                    pool.parallel_for(record_cpu, (&hits as *const Vec<AtomicU64>).cast(), n)
                };
                for h in &hits {
                    let v = h.load(Ordering::Relaxed);
                    if v & 1 == 1 {
                        worker_items += 1;
                        assert_ne!(
                            (v >> 32) as usize,
                            cpus[0] + 1,
                            "the worker ran on the caller's CPU {}",
                            cpus[0]
                        );
                    }
                }
            }
            assert!(worker_items > 0, "the worker ran nothing");
        })
        .join()
        .expect("test thread");
    }

    #[test]
    fn many_short_loops_reuse_the_pool() {
        let mut pool = ThreadPool::new(2).expect("pool");
        for i in 0..5000 {
            run_count(&mut pool, 1 + i % 37);
        }
    }

    #[test]
    fn home_ranges_partition_the_items() {
        for threads in 1..9 {
            for n in [0i64, 1, 2, 7, 16, 23, 1000, i64::MAX] {
                let mut at = 0;
                for t in 0..threads {
                    let (lo, hi) = home_range(n, threads, t);
                    assert_eq!(lo, at, "n {n}, {threads} threads, thread {t}");
                    assert!(hi >= lo && hi - lo <= (n / threads as i64).saturating_add(1));
                    at = hi;
                }
                assert_eq!(at, n);
            }
        }
    }

    unsafe extern "C" fn record_owner(ctx: *const DncContext, begin: i64, end: i64) {
        // SAFETY: the test passes a live slice of per-item thread ids.
        let owners = unsafe { &*(ctx as *const Vec<Mutex<Option<std::thread::ThreadId>>>) };
        for i in begin..end {
            *owners[i as usize].lock().expect("lock") = Some(std::thread::current().id());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_thread_takes_its_home_range_first() {
        // The caller claims item 0 right after publishing the job; the worker starts on its
        // own half and could only steal item 0 after finishing four 5 ms items.
        let mut pool = ThreadPool::new(2).expect("pool");
        let owners: Vec<Mutex<Option<std::thread::ThreadId>>> =
            (0..8).map(|_| Mutex::new(None)).collect();
        // SAFETY: `record_owner` only touches `owners`, under their locks.
        unsafe { pool.parallel_for(record_owner, (&owners as *const Vec<_>).cast(), 8) };
        let me = std::thread::current().id();
        assert_eq!(*owners[0].lock().expect("lock"), Some(me));
        assert!(owners.iter().all(|o| o.lock().expect("lock").is_some()));
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        // Pauses far longer than the spin budget: the workers go to sleep between jobs and
        // must be woken (a lost wake-up hangs this test).
        let mut pool = ThreadPool::new(3).expect("pool");
        for i in 0..20 {
            run_count(&mut pool, 5 + i);
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    unsafe extern "C" fn slow(ctx: *const DncContext, begin: i64, end: i64) {
        // SAFETY: the tests pass a pointer to a live slice of counters at least `end` long.
        let hits = unsafe { &*(ctx as *const Vec<AtomicU32>) };
        for i in begin..end {
            if i % 2 == 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            hits[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn caller_sleeps_until_a_slow_worker_is_done() {
        // Items that outlast the caller's spin budget: the caller blocks on `done` and must
        // be woken by the last worker, with every item's effect visible afterwards.
        let mut pool = ThreadPool::new(2).expect("pool");
        for _ in 0..10 {
            let hits: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
            // SAFETY: `slow` only touches `hits`, atomically.
            unsafe { pool.parallel_for(slow, (&hits as *const Vec<AtomicU32>).cast(), 4) };
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
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

    unsafe extern "C" fn nothing(_ctx: *const DncContext, _begin: i64, _end: i64) {}

    /// Cost of one hand-off and barrier with no work: `cargo test --release -p runtime --lib
    /// dispatch_cost -- --ignored --nocapture` (a measurement, not a check).
    #[test]
    #[ignore]
    fn dispatch_cost() {
        for threads in [2, 4] {
            let mut pool = ThreadPool::new(threads).expect("pool");
            for n in [2i64, 16] {
                let rounds = 200_000;
                let t0 = Instant::now();
                for _ in 0..rounds {
                    // SAFETY: `nothing` touches nothing.
                    unsafe { pool.parallel_for(nothing, std::ptr::null(), n) };
                }
                let ns = t0.elapsed().as_nanos() as f64 / f64::from(rounds);
                println!("{threads} threads, {n} items: {ns:.0} ns per parallel_for");
            }
        }
    }

    #[test]
    fn absurd_thread_counts_are_refused() {
        let e = ThreadPool::new(MAX_THREADS + 1).expect_err("must fail");
        assert!(e.to_string().contains("threads"), "{e}");
        assert!(ThreadPool::new(0).expect("auto").threads() >= 1);
    }
}
