//! The C API (`include/densenetc.h`, generated from this file by cbindgen; a test fails when the
//! checked-in header is stale).
//!
//! Every function returns a [`DncStatus`] (or is a destructor / accessor that cannot fail); on
//! failure `dnc_last_error()` describes it. Null pointers are errors, never dereferenced. No
//! panic crosses the boundary: each entry point catches unwinding and reports
//! `DNC_STATUS_PANIC`. A model may be shared by threads; a session is used by one thread at a
//! time (concurrent calls on one session return `DNC_STATUS_BUSY`). Freeing a model while
//! sessions of it live is allowed: the sessions keep what they need.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::error::Error;
use crate::model::{Device, Model, Session};

/// Status of every fallible C API call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DncStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = 1,
    /// An argument was out of range (device kind, thread count, path encoding).
    InvalidArgument = 2,
    /// The artefact file could not be read.
    Io = 3,
    /// The file is not a valid artefact (truncated, corrupted, foreign, unsupported version).
    InvalidArtefact = 4,
    /// The artefact's code could not be loaded (or speaks another ABI version).
    LoadFailed = 5,
    /// A buffer's length does not match the model's input or output shape.
    ShapeMismatch = 6,
    /// The device is not available (no CUDA support, no driver, no code for it).
    DeviceUnavailable = 7,
    /// The generated code reported a failure, or a CUDA driver call failed.
    Execution = 8,
    /// Memory or threads could not be obtained.
    OutOfResources = 9,
    /// The session is being run by another thread.
    Busy = 10,
    /// An internal error (a panic) was caught at the API boundary.
    Panic = 11,
}

/// `device_kind` of `dnc_session_create`: the CPU (`threads_or_ordinal` = threads, 0 = all cores).
pub const DNC_DEVICE_CPU: i32 = 0;
/// `device_kind` of `dnc_session_create`: a CUDA device (`threads_or_ordinal` = device ordinal).
/// Needs an artefact compiled with `--target cuda` (or `cpu,cuda`) and the CUDA driver
/// (`libcuda.so.1`, opened at run time); otherwise `DNC_STATUS_DEVICE_UNAVAILABLE`.
pub const DNC_DEVICE_CUDA: i32 = 1;

/// A loaded model (opaque). Thread-safe; free with `dnc_model_free`.
#[derive(Debug)]
pub struct DncModel {
    model: Model,
    labels: Vec<CString>,
    /// The manifest's head kind (`logits` when it records none).
    head: CString,
}

/// A session (opaque): one model on one device with its own memory. Free with
/// `dnc_session_free`.
#[derive(Debug)]
pub struct DncSession {
    session: Mutex<Session>,
}

struct Failure {
    status: DncStatus,
    message: String,
}

impl Failure {
    fn new(status: DncStatus, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    fn null(what: &str) -> Self {
        Failure::new(DncStatus::NullPointer, format!("`{what}` is NULL"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. } => DncStatus::Io,
            Error::Artefact(_) => DncStatus::InvalidArtefact,
            Error::Library(_) | Error::AbiVersion { .. } => DncStatus::LoadFailed,
            Error::ShapeMismatch { .. } | Error::LengthMismatch { .. } => DncStatus::ShapeMismatch,
            Error::DeviceUnavailable(_) => DncStatus::DeviceUnavailable,
            Error::Execution(_) | Error::Cuda { .. } => DncStatus::Execution,
            Error::OutOfMemory { .. } | Error::ThreadPool(_) => DncStatus::OutOfResources,
            _ => DncStatus::InvalidArgument,
        };
        Failure::new(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f`, turning errors and panics into a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> DncStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => DncStatus::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (panic caught at the C API boundary): {what}"
            ));
            DncStatus::Panic
        }
    }
}

/// Writes `value` through `out` if `out` is not NULL (out-parameters are cleared on failure).
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
unsafe fn store<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-null and valid for writes (caller's contract).
        unsafe { out.write(value) };
    }
}

/// Loads and validates the artefact at `path` (a NUL-terminated file name) and stores the model
/// in `*out_model` (NULL on failure).
///
/// # Safety
/// `path` is NULL or a valid C string; `out_model` is NULL or valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn dnc_model_load(
    path: *const c_char,
    out_model: *mut *mut DncModel,
) -> DncStatus {
    // SAFETY: out_model is NULL or writable (caller's contract).
    unsafe { store(out_model, std::ptr::null_mut()) };
    guard(|| {
        if path.is_null() {
            return Err(Failure::null("path"));
        }
        if out_model.is_null() {
            return Err(Failure::null("out_model"));
        }
        // SAFETY: path is a valid NUL-terminated string (caller's contract).
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        let model = Model::load(path_from_bytes(bytes)?)?;
        let labels = model
            .labels()
            .unwrap_or_default()
            .iter()
            .map(|l| {
                CString::new(l.as_bytes())
                    .map_err(|_| Failure::new(DncStatus::InvalidArtefact, "label with a NUL byte"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kind = model
            .manifest()
            .head
            .as_ref()
            .map_or("logits", |h| h.kind.as_str());
        let head = CString::new(kind)
            .map_err(|_| Failure::new(DncStatus::InvalidArtefact, "head kind with a NUL byte"))?;
        let raw = Box::into_raw(Box::new(DncModel {
            model,
            labels,
            head,
        }));
        // SAFETY: checked non-null above; writable (caller's contract).
        unsafe { out_model.write(raw) };
        Ok(())
    })
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> Result<std::path::PathBuf, Failure> {
    use std::os::unix::ffi::OsStrExt;
    Ok(std::ffi::OsStr::from_bytes(bytes).into())
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> Result<std::path::PathBuf, Failure> {
    std::str::from_utf8(bytes)
        .map(Into::into)
        .map_err(|_| Failure::new(DncStatus::InvalidArgument, "path is not UTF-8"))
}

/// Frees a model (NULL is ignored). Sessions created from it stay valid.
///
/// # Safety
/// `model` is NULL or a pointer from `dnc_model_load` not freed before.
#[no_mangle]
pub unsafe extern "C" fn dnc_model_free(model: *mut DncModel) {
    if model.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: model came from Box::into_raw in dnc_model_load and is freed once.
        drop(unsafe { Box::from_raw(model) });
        Ok(())
    });
}

/// # Safety
/// `model` is NULL or a live model; `dims` is NULL or valid for `capacity` writes; `rank` is
/// NULL or writable.
unsafe fn write_shape(
    model: *const DncModel,
    which: fn(&Model) -> &[usize],
    dims: *mut usize,
    capacity: usize,
    rank: *mut usize,
) -> DncStatus {
    guard(|| {
        // SAFETY: model is NULL or live (caller's contract).
        let model = unsafe { model.as_ref() }.ok_or_else(|| Failure::null("model"))?;
        if rank.is_null() {
            return Err(Failure::null("rank"));
        }
        let shape = which(&model.model);
        // SAFETY: rank is non-null and writable (caller's contract).
        unsafe { rank.write(shape.len()) };
        if capacity < shape.len() {
            return Err(Failure::new(
                DncStatus::InvalidArgument,
                format!(
                    "shape {shape:?} has rank {} but capacity is {capacity}",
                    shape.len()
                ),
            ));
        }
        if dims.is_null() {
            return Err(Failure::null("dims"));
        }
        for (i, &d) in shape.iter().enumerate() {
            // SAFETY: i < shape.len() <= capacity, and dims is valid for capacity writes.
            unsafe { dims.add(i).write(d) };
        }
        Ok(())
    })
}

/// Writes the model's input shape (NCHW) to `dims[0..*rank]`; `*rank` is set even when
/// `capacity` is too small (then `DNC_STATUS_INVALID_ARGUMENT` is returned).
///
/// # Safety
/// `model` is NULL or live; `dims` is NULL or valid for `capacity` writes; `rank` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dnc_model_input_shape(
    model: *const DncModel,
    dims: *mut usize,
    capacity: usize,
    rank: *mut usize,
) -> DncStatus {
    // SAFETY: forwarded caller's contract.
    unsafe { write_shape(model, Model::input_shape, dims, capacity, rank) }
}

/// Writes the model's output shape (`[N, classes]`) like `dnc_model_input_shape`.
///
/// # Safety
/// As for `dnc_model_input_shape`.
#[no_mangle]
pub unsafe extern "C" fn dnc_model_output_shape(
    model: *const DncModel,
    dims: *mut usize,
    capacity: usize,
    rank: *mut usize,
) -> DncStatus {
    // SAFETY: forwarded caller's contract.
    unsafe { write_shape(model, Model::output_shape, dims, capacity, rank) }
}

/// The name of output class `index`, or NULL when the artefact has no labels or `index` is out
/// of range. The string lives as long as the model.
///
/// # Safety
/// `model` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn dnc_model_label(model: *const DncModel, index: usize) -> *const c_char {
    // SAFETY: model is NULL or live (caller's contract).
    match unsafe { model.as_ref() } {
        Some(m) => m.labels.get(index).map_or(std::ptr::null(), |l| l.as_ptr()),
        None => std::ptr::null(),
    }
}

/// What the model outputs (its `--head`): "logits" (the classifier's output, also for
/// artefacts that record no head), "softmax", "sigmoid", "op-norm" (sigmoid + operating-point
/// normalisation: 0.5 is each class's threshold) or "features" (the pooled feature vector);
/// NULL when `model` is NULL. The string lives as long as the model.
///
/// # Safety
/// `model` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn dnc_model_head(model: *const DncModel) -> *const c_char {
    // SAFETY: model is NULL or live (caller's contract).
    match unsafe { model.as_ref() } {
        Some(m) => m.head.as_ptr(),
        None => std::ptr::null(),
    }
}

/// Creates a session of `model` on a device: `DNC_DEVICE_CPU` with `threads_or_ordinal`
/// threads (0 = one per core), or `DNC_DEVICE_CUDA` with that device ordinal. Stores it in
/// `*out_session` (NULL on failure).
///
/// # Safety
/// `model` is NULL or live; `out_session` is NULL or valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn dnc_session_create(
    model: *const DncModel,
    device_kind: i32,
    threads_or_ordinal: usize,
    out_session: *mut *mut DncSession,
) -> DncStatus {
    // SAFETY: out_session is NULL or writable (caller's contract).
    unsafe { store(out_session, std::ptr::null_mut()) };
    guard(|| {
        // SAFETY: model is NULL or live (caller's contract).
        let model = unsafe { model.as_ref() }.ok_or_else(|| Failure::null("model"))?;
        if out_session.is_null() {
            return Err(Failure::null("out_session"));
        }
        let device = match device_kind {
            DNC_DEVICE_CPU => Device::Cpu {
                threads: threads_or_ordinal,
            },
            DNC_DEVICE_CUDA => Device::Cuda {
                ordinal: threads_or_ordinal,
            },
            k => {
                return Err(Failure::new(
                    DncStatus::InvalidArgument,
                    format!("unknown device kind {k}"),
                ))
            }
        };
        let session = model.model.session(device)?;
        let raw = Box::into_raw(Box::new(DncSession {
            session: Mutex::new(session),
        }));
        // SAFETY: checked non-null above; writable (caller's contract).
        unsafe { out_session.write(raw) };
        Ok(())
    })
}

/// Runs one inference: `input` holds `input_len` floats (the model's input shape, NCHW) and
/// `output` receives `output_len` floats (the output shape). Lengths must match exactly.
///
/// # Safety
/// `session` is NULL or live; `input` is NULL or valid for `input_len` reads; `output` is NULL
/// or valid for `output_len` writes; the two do not overlap.
#[no_mangle]
pub unsafe extern "C" fn dnc_session_run(
    session: *mut DncSession,
    input: *const f32,
    input_len: usize,
    output: *mut f32,
    output_len: usize,
) -> DncStatus {
    guard(|| {
        // SAFETY: session is NULL or live (caller's contract); only shared access is needed.
        let session = unsafe { session.as_ref() }.ok_or_else(|| Failure::null("session"))?;
        if input.is_null() {
            return Err(Failure::null("input"));
        }
        if output.is_null() {
            return Err(Failure::null("output"));
        }
        // SAFETY: input is valid for input_len reads (caller's contract).
        let input = unsafe { std::slice::from_raw_parts(input, input_len) };
        // SAFETY: output is valid for output_len writes and does not overlap input.
        let output = unsafe { std::slice::from_raw_parts_mut(output, output_len) };
        let mut s = session.session.try_lock().map_err(|e| match e {
            std::sync::TryLockError::WouldBlock => Failure::new(
                DncStatus::Busy,
                "the session is being run by another thread",
            ),
            std::sync::TryLockError::Poisoned(_) => Failure::new(
                DncStatus::Panic,
                "the session was poisoned by an earlier internal error",
            ),
        })?;
        s.run_into(input, output)?;
        Ok(())
    })
}

/// Frees a session (NULL is ignored); its threads are joined.
///
/// # Safety
/// `session` is NULL or a pointer from `dnc_session_create` not freed before, and not in use.
#[no_mangle]
pub unsafe extern "C" fn dnc_session_free(session: *mut DncSession) {
    if session.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: session came from Box::into_raw in dnc_session_create and is freed once.
        drop(unsafe { Box::from_raw(session) });
        Ok(())
    });
}

/// The message of the last failed call on this thread ("" if none). Valid until the next
/// failing call on this thread.
#[no_mangle]
pub extern "C" fn dnc_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The runtime's version, e.g. "densenetc-runtime 0.1.0". A static string.
#[no_mangle]
pub extern "C" fn dnc_version() -> *const c_char {
    VERSION.as_ptr()
}

static VERSION: &CStr = {
    const S: &str = concat!("densenetc-runtime ", env!("CARGO_PKG_VERSION"), "\0");
    match CStr::from_bytes_with_nul(S.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("version string has an interior NUL"),
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: dnc_last_error returns a valid C string owned by this thread.
        unsafe { CStr::from_ptr(dnc_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panics_become_a_status() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, DncStatus::Panic);
        assert!(last_error().contains("boom"), "{}", last_error());
    }

    #[test]
    fn null_pointers_are_errors() {
        let mut model = std::ptr::null_mut();
        // SAFETY: testing NULL handling: every pointer is NULL or valid.
        unsafe {
            assert_eq!(
                dnc_model_load(std::ptr::null(), &mut model),
                DncStatus::NullPointer
            );
            assert!(last_error().contains("path"));
            assert_eq!(
                dnc_model_load(c"x".as_ptr(), std::ptr::null_mut()),
                DncStatus::NullPointer
            );
            let mut rank = 0;
            assert_eq!(
                dnc_model_input_shape(std::ptr::null(), std::ptr::null_mut(), 0, &mut rank),
                DncStatus::NullPointer
            );
            let mut s = std::ptr::null_mut();
            assert_eq!(
                dnc_session_create(std::ptr::null(), DNC_DEVICE_CPU, 1, &mut s),
                DncStatus::NullPointer
            );
            assert!(s.is_null());
            assert_eq!(
                dnc_session_run(
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    0,
                    std::ptr::null_mut(),
                    0
                ),
                DncStatus::NullPointer
            );
            assert!(dnc_model_label(std::ptr::null(), 0).is_null());
            dnc_model_free(std::ptr::null_mut());
            dnc_session_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let mut model = std::ptr::null_mut();
        // SAFETY: valid C string and out pointer.
        let status = unsafe { dnc_model_load(c"/nonexistent/model.dnc".as_ptr(), &mut model) };
        assert_eq!(status, DncStatus::Io);
        assert!(model.is_null());
        assert!(
            last_error().contains("/nonexistent/model.dnc"),
            "{}",
            last_error()
        );
    }

    #[test]
    fn version_is_a_c_string() {
        // SAFETY: static C string.
        let v = unsafe { CStr::from_ptr(dnc_version()) };
        assert!(v.to_string_lossy().starts_with("densenetc-runtime "));
    }
}
