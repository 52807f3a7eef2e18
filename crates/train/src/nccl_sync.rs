//! Data parallelism across GPUs through NCCL (feature `nccl`, implied by `cuda`): one process
//! per GPU, NCCL's unique id made by rank 0 and handed to the other ranks over TCP
//! ([`Rendezvous`]), then one all-reduce per step ([`ProcessSync`] does the rest).
//!
//! NCCL and the CUDA driver are loaded at run time through cudarc, so the build needs neither.
//! The sums go through host memory, because burn's tensors do not lend their device buffers;
//! that costs two copies of the gradients per step, small beside a UNet's backward pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::Device;
use cudarc::driver::{CudaContext, CudaStream, DeviceRepr};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};
use ldmscale_util::rendezvous::Rendezvous;

use crate::error::TrainError;
use crate::process_sync::{AllReduce, ProcessSync};

/// Who this rank is and where rank 0 listens.
#[derive(Clone, Debug)]
pub struct NcclRank {
    /// Global rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// The GPU of this rank (cuda:N, usually the local rank).
    pub gpu: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port of rank 0.
    pub master_port: u16,
    /// How long ranks wait for each other at start.
    pub timeout: Duration,
}

/// The NCCL communicator of this rank, with the stream its sums run on.
pub struct NcclWorld {
    comm: Comm,
    stream: std::sync::Arc<CudaStream>,
}

/// Data parallelism over NCCL.
pub type NcclSync = ProcessSync<NcclWorld>;

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::settings("nccl", format!("{what}: {e:?}"))
}

impl NcclWorld {
    /// Loads NCCL, makes (rank 0) or receives (the others) the unique id and joins the
    /// communicator of `who.world_size` ranks on GPU `who.gpu`.
    pub fn join(who: &NcclRank) -> Result<Self, TrainError> {
        check_libraries()?;
        let context = CudaContext::new(who.gpu)
            .map_err(|e| nccl_error(&format!("CUDA device {}", who.gpu), e))?;
        let stream = context.default_stream();
        let id = if who.rank == 0 {
            Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?
        } else {
            Id::uninit([0; 128])
        };
        let shared = Rendezvous {
            rank: who.rank,
            world_size: who.world_size,
            master_addr: who.master_addr.clone(),
            master_port: who.master_port,
            timeout: who.timeout,
        }
        .share(&id_bytes(&id))
        .map_err(|e| TrainError::settings("nccl", e.to_string()))?;
        let id = id_from_bytes(&shared);
        let comm = Comm::from_rank(stream.clone(), who.rank, who.world_size, id)
            .map_err(|e| nccl_error("ncclCommInitRank (one process per GPU?)", e))?;
        Ok(Self { comm, stream })
    }
}

impl NcclSync {
    /// Joins the NCCL world and checks that every rank gets rows of a `batch_size` micro-batch.
    pub fn join(who: &NcclRank, device: &Device, batch_size: usize) -> Result<Self, TrainError> {
        ProcessSync::new(NcclWorld::join(who)?, device, batch_size)
    }
}

fn id_bytes(id: &Id) -> Vec<u8> {
    id.internal().iter().map(|&c| c as u8).collect()
}

fn id_from_bytes(bytes: &[u8]) -> Id {
    let mut internal = [0 as std::ffi::c_char; 128];
    for (slot, &b) in internal.iter_mut().zip(bytes) {
        *slot = b as std::ffi::c_char;
    }
    Id::uninit(internal)
}

impl AllReduce for NcclWorld {
    const ENGINE: &'static str = "NCCL";

    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn size(&self) -> usize {
        self.comm.world_size()
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<(), TrainError> {
        let summed = self.sum_on_gpu(values)?;
        values.copy_from_slice(&summed);
        Ok(())
    }

    fn sum_f64(&self, value: f64) -> Result<f64, TrainError> {
        Ok(self.sum_on_gpu(&[value])?[0])
    }
}

impl NcclWorld {
    /// Copies `values` to the GPU, sums them over the ranks there and copies the sums back.
    fn sum_on_gpu<T: NcclType + DeviceRepr + Default + Clone>(
        &self,
        values: &[T],
    ) -> Result<Vec<T>, TrainError> {
        let mut buffer = self
            .stream
            .clone_htod(values)
            .map_err(|e| nccl_error("copy to the GPU", e))?;
        self.comm
            .all_reduce_in_place(&mut buffer, &ReduceOp::Sum)
            .map_err(|e| nccl_error("ncclAllReduce", e))?;
        self.stream
            .clone_dtoh(&buffer)
            .map_err(|e| nccl_error("copy from the GPU", e))
    }
}

/// Refuses to start when the CUDA driver or NCCL cannot be loaded, naming the file names
/// cudarc searched and, for NCCL, the soname trap.
pub fn check_libraries() -> Result<(), TrainError> {
    // SAFETY: only tries to open the libraries; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(TrainError::settings(
            "nccl",
            format!(
                "the CUDA driver library could not be loaded (searched {:?}); NCCL needs an \
                 NVIDIA GPU and its driver",
                cudarc::get_lib_name_candidates("cuda")
            ),
        ));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(TrainError::settings("nccl", missing_nccl_message()));
    }
    Ok(())
}

/// Why NCCL did not load and how to fix it: cudarc opens the unversioned `libnccl.so`, while
/// pip's nvidia-nccl wheels (and NCCL runtime packages) ship only the soname `libnccl.so.2`.
pub fn missing_nccl_message() -> String {
    let searched = cudarc::get_lib_name_candidates("nccl");
    let found = soname_copies();
    let hint = match found.first() {
        Some(path) => format!(
            "found {} but not libnccl.so beside it: `ln -s {} DIR/libnccl.so` and put DIR \
             on LD_LIBRARY_PATH",
            path.display(),
            path.display()
        ),
        None => "install NCCL (pip install nvidia-nccl-cu12, or the libnccl2 package) and \
                 link its libnccl.so.2 as libnccl.so in a directory on LD_LIBRARY_PATH"
            .to_string(),
    };
    format!(
        "NCCL could not be loaded (searched {searched:?} on the library path). NCCL is found \
         by the unversioned name libnccl.so, but pip's nvidia-nccl wheels and NCCL runtime \
         packages ship only the soname libnccl.so.2; {hint}"
    )
}

/// Copies of `libnccl.so.2` on LD_LIBRARY_PATH and in the usual library folders.
fn soname_copies() -> Vec<PathBuf> {
    let listed = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let usual = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/cuda/lib64",
        "/usr/lib64",
    ];
    listed
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(usual)
        .map(|d| Path::new(d).join("libnccl.so.2"))
        .filter(|p| p.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unique_id_survives_its_trip_through_bytes() {
        let bytes: Vec<u8> = (0..128).map(|i| (255 - i) as u8).collect();
        assert_eq!(id_bytes(&id_from_bytes(&bytes)), bytes);
    }

    #[test]
    fn the_missing_library_message_names_the_soname_trap() {
        let message = missing_nccl_message();
        assert!(message.contains("libnccl.so.2"), "{message}");
        assert!(message.contains("LD_LIBRARY_PATH"), "{message}");
        assert!(message.contains("\"libnccl.so\""), "{message}");
    }

    #[test]
    fn a_machine_without_the_libraries_is_refused_by_name() {
        // SAFETY: only opens the libraries.
        let (driver, nccl) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::nccl::sys::is_culib_present(),
            )
        };
        match (driver, nccl, check_libraries()) {
            (false, _, Err(e)) => assert!(e.to_string().contains("CUDA driver"), "{e}"),
            (true, false, Err(e)) => assert!(e.to_string().contains("libnccl.so.2"), "{e}"),
            (true, true, result) => {
                assert!(result.is_ok());
                eprintln!("skipped: this machine has the CUDA driver and NCCL");
            }
            (_, _, Ok(())) => panic!("a missing library was not refused"),
        }
    }

    /// A world of one rank on GPU 0: the smoke test a lent GPU machine runs.
    #[test]
    fn a_one_rank_world_sums_to_its_own_values() {
        if check_libraries().is_err() {
            eprintln!(
                "skipped: no CUDA driver or NCCL on this machine ({:?})",
                check_libraries().err()
            );
            return;
        }
        let world = NcclWorld::join(&NcclRank {
            rank: 0,
            world_size: 1,
            gpu: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 0,
            timeout: Duration::from_secs(10),
        })
        .unwrap();
        let mut values = vec![1.5f32, -2.0, 3.25];
        world.sum_f32(&mut values).unwrap();
        assert_eq!(values, [1.5, -2.0, 3.25]);
        assert_eq!(world.sum_f64(0.125).unwrap(), 0.125);
    }

    #[test]
    fn a_soname_copy_on_the_library_path_is_pointed_at() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("libnccl.so.2"), b"").unwrap();
        // SAFETY: no other test of this binary reads LD_LIBRARY_PATH concurrently.
        unsafe { std::env::set_var("LD_LIBRARY_PATH", dir.path()) };
        let message = missing_nccl_message();
        let expected = dir.path().join("libnccl.so.2");
        assert!(
            message.contains(&format!("ln -s {}", expected.display())),
            "{message}"
        );
    }
}
