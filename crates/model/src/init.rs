//! Seeded draws from burn's random generator. burn keeps one generator per process and
//! initialises parameters lazily, on first read; two models or tensors drawn at the same time
//! (parallel tests, threads of one study) would interleave their draws. Every draw made here
//! holds one process-wide lock, so what [`seeded`] and [`seeded_init`] give is a function of
//! their seed alone, whatever else the process does, as long as its other draws also run in
//! [`with_device_rng`].

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

/// Runs `f` while no other thread of this process draws from burn's device generator. Any
/// code that initialises parameters (even ones overwritten right after) must run inside: a
/// draw from elsewhere between a [`seeded`] call's seeding and its last draw changes what that
/// call gets.
pub fn with_device_rng<R>(f: impl FnOnce() -> R) -> R {
    static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = DEVICE_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f()
}

/// What `draw` gives with `device`'s generator seeded with `seed` (random tensors, say);
/// lazily initialised parameters must be read inside `draw` (see [`seeded_init`]).
pub fn seeded<R>(device: &Device, seed: u64, draw: impl FnOnce() -> R) -> R {
    with_device_rng(|| {
        device.seed(seed);
        draw()
    })
}

/// A module built by `build` with parameters drawn from `device`'s generator seeded with
/// `seed`, every one initialised before the lock is let go.
pub fn seeded_init<M: Module>(device: &Device, seed: u64, build: impl FnOnce() -> M) -> M {
    seeded(device, seed, || {
        let module = build();
        initialise(&module);
        module
    })
}

/// Reads every parameter of `module`, which initialises a lazy one.
fn initialise<M: Module>(module: &M) {
    struct Read;
    impl ModuleVisitor for Read {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_seeded_draw_ignores_draws_of_other_threads() {
        let device = Device::flex();
        let draw = || {
            seeded(&device, 9, || {
                Tensor::<1>::random([64], Distribution::Default, &device)
            })
        };
        let alone = values(draw());
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let others = std::thread::spawn({
            let start = start.clone();
            move || {
                let device = Device::flex();
                start.wait();
                for _ in 0..20_000 {
                    with_device_rng(|| Tensor::<1>::random([8], Distribution::Default, &device));
                }
            }
        });
        start.wait();
        for _ in 0..2_000 {
            assert_eq!(values(draw()), alone);
        }
        others.join().unwrap();
    }
}
