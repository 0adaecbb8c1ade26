//! Stands in for the CUDA executor when the runtime is built without the `cuda` cargo feature:
//! the crate-internal types `model` uses, uninhabited, so no value of them ever exists and no
//! cudarc is linked. [`super::driver::probe`] fails before `Model` would load a
//! [`DeviceModel`]; should anything reach [`DeviceModel::load`], it reports the same error.

use std::sync::Arc;

use crate::artefact::{Artefact, CudaLaunch, CudaTarget, TensorSpec};
use crate::error::Result;
use crate::profile::KernelTime;

/// No value: nothing can be loaded on a CUDA device without the executor.
#[derive(Debug, Clone, Copy)]
enum Never {}

/// Never constructed (see the module docs).
#[derive(Debug)]
pub(crate) struct DeviceModel {
    pub(crate) ordinal: usize,
    never: Never,
}

impl DeviceModel {
    pub(crate) fn load(_: &Artefact, _: &CudaTarget, _: usize) -> Result<Self> {
        Err(super::driver::built_without_cuda())
    }
}

/// Never constructed: creating one needs a [`DeviceModel`].
#[derive(Debug)]
pub(crate) struct CudaSession {
    never: Never,
}

impl CudaSession {
    pub(crate) fn new(
        dev: Arc<DeviceModel>,
        _: &CudaTarget,
        _: u64,
        _: &TensorSpec,
        _: &TensorSpec,
    ) -> Result<Self> {
        match dev.never {}
    }

    pub(crate) fn ordinal(&self) -> usize {
        match self.never {}
    }

    pub(crate) fn set_graphs(&mut self, _: bool) {
        match self.never {}
    }

    pub(crate) fn graph_captured(&self) -> bool {
        match self.never {}
    }

    pub(crate) fn run(&mut self, _: &[f32], _: &mut [f32]) -> Result<()> {
        match self.never {}
    }

    pub(crate) fn run_profiled(
        &mut self,
        _: &[f32],
        _: &mut [f32],
        _: &[CudaLaunch],
    ) -> Result<Vec<KernelTime>> {
        match self.never {}
    }
}
