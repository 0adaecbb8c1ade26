//! `densenetc._densenetc`: the native part of the Python package (PyO3).
//!
//! The Python layer (`densenetc/__init__.py`) converts inputs (torch tensors, non-contiguous
//! or read-only arrays), checks shapes and dtypes and reads PyTorch modules; this module only
//! runs and compiles:
//!
//! * [`Model`] wraps a [`runtime::Model`] (cheap to clone, shareable) and a pool of
//!   [`runtime::Session`]s behind a `Mutex`. A call takes a session out of the pool (or makes
//!   one when the pool is empty, so N concurrent callers get N sessions), runs with the GIL
//!   released, and puts the session back. The lock is held only to pop and push.
//! * The input is borrowed from the NumPy array (`as_slice`, no copy): the runtime reads the
//!   array's own buffer. `last_input_address` records the address the runtime was given, so
//!   tests can check that it is the array's data pointer.
//! * [`compile`] hands a name → (shape, f32 buffer) map to `compiler::compile` as
//!   `Weights::Tensors`; [`compile_checkpoint`] goes through `compiler::compile` with
//!   `Weights::File`: both take the library's one compile sequence.

use compiler::backend::cpu::CpuOptions;
use compiler::builder::{ConfigOverrides, DenseNetConfig};
use compiler::driver::{self, CompileOptions, HeadKind, Progress, Target};
use compiler::weights::{Tensor, TensorMap};
use numpy::{PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

fn runtime_err(e: runtime::Error) -> PyErr {
    match e {
        runtime::Error::InvalidArgument(m) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

fn compile_err(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// Where the artefact's bytes are, for `save`.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// A loaded (or freshly compiled) artefact with a pool of sessions.
#[pyclass(module = "densenetc._densenetc", frozen)]
struct Model {
    model: runtime::Model,
    device: runtime::Device,
    pool: Mutex<Vec<runtime::Session>>,
    /// Sessions made so far (the pool's high-water mark).
    made: AtomicUsize,
    last_input: AtomicUsize,
    source: Source,
}

impl Model {
    fn new(model: runtime::Model, device: runtime::Device, source: Source) -> PyResult<Self> {
        let m = Model {
            model,
            device,
            pool: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            last_input: AtomicUsize::new(0),
            source,
        };
        // One session now: errors (no CPU code, no CUDA) surface at load time.
        let s = m.model.session(device).map_err(runtime_err)?;
        m.made.fetch_add(1, Ordering::Relaxed);
        m.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s);
        Ok(m)
    }

    fn take(&self) -> runtime::Result<runtime::Session> {
        let popped = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match popped {
            Some(s) => Ok(s),
            None => {
                let s = self.model.session(self.device)?;
                self.made.fetch_add(1, Ordering::Relaxed);
                Ok(s)
            }
        }
    }

    fn give(&self, s: runtime::Session) {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(s);
    }
}

fn parse_device(device: &str, threads: usize) -> PyResult<runtime::Device> {
    runtime::Device::parse(device, threads).map_err(runtime_err)
}

#[pymethods]
impl Model {
    /// Runs one C-contiguous float32 array of exactly `input_shape` (the Python layer checks);
    /// returns a new float32 array of `output_shape`. The GIL is released while running.
    fn _run<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
        let shape: Vec<usize> = x.shape().to_vec();
        let input = x.as_slice().map_err(|_| {
            PyValueError::new_err("densenetc: the input must be a C-contiguous float32 array")
        })?;
        self.last_input
            .store(input.as_ptr() as usize, Ordering::Relaxed);
        let out_len: usize = self.model.output_shape().iter().product();
        let mut out = vec![0f32; out_len];
        let result = py.detach(|| -> runtime::Result<()> {
            let mut s = self.take()?;
            if shape != self.model.input_shape() {
                self.give(s);
                return Err(runtime::Error::InvalidArgument(format!(
                    "input shape {:?} does not match the model's input shape {:?}",
                    shape,
                    self.model.input_shape()
                )));
            }
            let r = s.run_into(input, &mut out);
            self.give(s);
            r
        });
        result.map_err(runtime_err)?;
        let arr = numpy::PyArray1::from_vec(py, out);
        let dims: Vec<usize> = self.model.output_shape().to_vec();
        arr.reshape(dims)
    }

    /// Writes the artefact to `path`.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| match &self.source {
            Source::File(from) => {
                if std::fs::canonicalize(from).ok() == std::fs::canonicalize(&path).ok() {
                    return Ok(());
                }
                std::fs::copy(from, &path).map(|_| ())
            }
            Source::Bytes(b) => std::fs::write(&path, b),
        })
        .map_err(|e| PyRuntimeError::new_err(format!("{}: {e}", path.display())))
    }

    #[getter]
    fn input_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.model.input_shape())
    }

    #[getter]
    fn output_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.model.output_shape())
    }

    #[getter]
    fn labels(&self) -> Option<Vec<String>> {
        self.model.labels().map(<[String]>::to_vec)
    }

    /// The CPU variant this model runs (`None` without CPU code).
    #[getter]
    fn cpu_variant(&self) -> Option<String> {
        self.model.cpu_variant().map(str::to_owned)
    }

    /// Sessions made so far (at most the number of concurrent callers seen).
    #[getter]
    fn sessions(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    /// The address of the last input buffer handed to the runtime (for zero-copy checks).
    #[getter]
    fn last_input_address(&self) -> usize {
        self.last_input.load(Ordering::Relaxed)
    }

    /// The artefact's manifest as JSON text.
    #[getter]
    fn manifest_json(&self) -> PyResult<String> {
        serde_json::to_string(self.model.manifest()).map_err(compile_err)
    }
}

/// Loads an artefact.
#[pyfunction]
#[pyo3(signature = (path, device = "cpu", threads = 0, cpu = None))]
fn load(
    py: Python<'_>,
    path: PathBuf,
    device: &str,
    threads: usize,
    cpu: Option<String>,
) -> PyResult<Model> {
    let device = parse_device(device, threads)?;
    let model = py
        .detach(|| runtime::Model::load_for_cpu(&path, cpu.as_deref()))
        .map_err(runtime_err)?;
    py.detach(|| Model::new(model, device, Source::File(path.clone())))
}

struct Opts {
    batch: usize,
    target: String,
    precision: String,
    cpu: String,
    head: Option<String>,
    labels: Option<Vec<String>>,
}

fn options<'a>(o: &Opts, progress: Option<driver::ProgressFn<'a>>) -> PyResult<CompileOptions<'a>> {
    let mut targets = Vec::new();
    for t in o.target.split(',') {
        targets.push(t.parse::<Target>().map_err(PyValueError::new_err)?);
    }
    let mut opts = CompileOptions::for_targets(&targets);
    opts.batch = o.batch;
    if !opts.cpus.is_empty() {
        // `x86-64-v3,znver4`: one code variant per CPU, as the CLI's `--cpu`.
        opts.cpus = o
            .cpu
            .split(',')
            .map(|name| CpuOptions {
                cpu: name.trim().to_owned(),
                ..CpuOptions::default()
            })
            .collect();
    }
    opts.precision = o
        .precision
        .parse()
        .map_err(|e: String| PyValueError::new_err(e))?;
    opts.head = match o.head.as_deref() {
        None => None,
        Some(h) => Some(
            h.parse::<HeadKind>()
                .map_err(|e| PyNotImplementedError::new_err(format!("head {h:?}: {e}")))?,
        ),
    };
    opts.labels = o.labels.clone();
    opts.progress = progress;
    Ok(opts)
}

fn config(arch: &str, overrides_json: &str) -> PyResult<DenseNetConfig> {
    let o: ConfigOverrides = serde_json::from_str(overrides_json)
        .map_err(|e| PyValueError::new_err(format!("configuration: {e}")))?;
    DenseNetConfig::resolve(Some(arch), &o).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Runs `f` with a progress callback calling `cb(stage, message)` (with the GIL) if given.
fn with_progress<R>(
    py: Python<'_>,
    cb: Option<Py<PyAny>>,
    f: impl FnOnce(Option<driver::ProgressFn<'_>>) -> R + Send,
) -> R
where
    R: Send,
{
    let report = move |p: Progress<'_>| {
        if let Some(cb) = &cb {
            Python::attach(|py| {
                if let Err(e) = cb.call1(py, (p.stage.to_string(), p.message)) {
                    e.print(py);
                }
            });
        }
    };
    py.detach(|| f(Some(&report)))
}

fn finish(
    py: Python<'_>,
    compiled: driver::Compiled,
    device: &str,
    threads: usize,
) -> PyResult<Model> {
    let device = parse_device(device, threads)?;
    py.detach(|| {
        let bytes = compiled.to_bytes().map_err(compile_err)?;
        drop(compiled);
        let artefact = runtime::Artefact::read(&bytes).map_err(runtime_err)?;
        let model = runtime::Model::from_artefact(artefact).map_err(runtime_err)?;
        Model::new(model, device, Source::Bytes(bytes))
    })
}

/// Compiles `arch` + overrides with the given tensors (name → (shape, float32 array)).
#[pyfunction]
#[pyo3(signature = (arch, overrides_json, tensors, *, batch, target, precision, cpu, head, labels, progress, device, threads, op_threshs = None))]
#[allow(clippy::too_many_arguments)]
fn compile(
    py: Python<'_>,
    arch: &str,
    overrides_json: &str,
    tensors: &Bound<'_, PyDict>,
    batch: usize,
    target: String,
    precision: String,
    cpu: String,
    head: Option<String>,
    labels: Option<Vec<String>>,
    progress: Option<Py<PyAny>>,
    device: &str,
    threads: usize,
    op_threshs: Option<Vec<f32>>,
) -> PyResult<Model> {
    let cfg = config(arch, overrides_json)?;
    let mut map = TensorMap::new();
    for (k, v) in tensors.iter() {
        let name: String = k.extract()?;
        let arr: PyReadonlyArrayDyn<'_, f32> = v.extract().map_err(|_| {
            PyValueError::new_err(format!("tensor {name}: expected a float32 numpy array"))
        })?;
        let shape = arr.shape().to_vec();
        let data = match arr.as_slice() {
            Ok(s) => s.to_vec(),
            Err(_) => arr.as_array().iter().copied().collect(),
        };
        map.insert(name, Tensor::f32(shape, data));
    }
    let o = Opts {
        batch,
        target,
        precision,
        cpu,
        head,
        labels,
    };
    let compiled = with_progress(py, progress, |p| -> PyResult<driver::Compiled> {
        let mut opts = options(&o, p)?;
        opts.op_threshs = op_threshs;
        compiler::compile(&cfg, &compiler::Weights::Tensors(map), &opts).map_err(|e| match e {
            // The tensors do not fit the configuration read from the module: the caller's input.
            compiler::CompileError::Weights(e) => PyValueError::new_err(e.to_string()),
            e => compile_err(e),
        })
    })?;
    finish(py, compiled, device, threads)
}

/// Compiles `arch` + overrides with the weights of a checkpoint file (`path`), or with
/// deterministic random weights (`seed`, when `path` is `None`).
#[pyfunction]
#[pyo3(signature = (arch, overrides_json, path, *, batch, target, precision, cpu, head, labels, progress, device, threads, seed = 0))]
#[allow(clippy::too_many_arguments)]
fn compile_checkpoint(
    py: Python<'_>,
    arch: &str,
    overrides_json: &str,
    path: Option<PathBuf>,
    batch: usize,
    target: String,
    precision: String,
    cpu: String,
    head: Option<String>,
    labels: Option<Vec<String>>,
    progress: Option<Py<PyAny>>,
    device: &str,
    threads: usize,
    seed: u64,
) -> PyResult<Model> {
    let cfg = config(arch, overrides_json)?;
    let o = Opts {
        batch,
        target,
        precision,
        cpu,
        head,
        labels,
    };
    let weights = match path {
        Some(p) => compiler::Weights::File(p),
        None => compiler::Weights::Random(seed),
    };
    let compiled = with_progress(py, progress, |p| -> PyResult<driver::Compiled> {
        let opts = options(&o, p)?;
        compiler::compile(&cfg, &weights, &opts).map_err(compile_err)
    })?;
    finish(py, compiled, device, threads)
}

/// The presets `arch=` accepts.
#[pyfunction]
fn presets() -> Vec<&'static str> {
    compiler::builder::PRESETS.to_vec()
}

#[pymodule]
fn _densenetc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(compile_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(presets, m)?)?;
    Ok(())
}
