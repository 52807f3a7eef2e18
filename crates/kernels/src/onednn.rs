//! oneDNN (Debian's `libdnnl-dev` 2.x, the library behind PyTorch's CPU convolutions, with its
//! own AVX2 / AVX-512 / AMX dispatch) through its C API, behind the non-default `onednn`
//! feature: a convolution forward and a matrix product on plain f32 buffers, in f32 or with
//! bf16 products (`fpmath_mode bf16`), to measure against this crate's kernels side by side
//! (`examples/onednn_bench.rs`). The model does not call it: see that example for why.
//!
//! The 2.x API passes descriptors as C structs; Rust only needs room for them, so they are
//! opaque buffers larger than the library's (696 and 5976 bytes in 2.6).

use std::ffi::c_void;
use std::ptr::{null, null_mut};

/// Room for a `dnnl_memory_desc_t`.
#[repr(C, align(64))]
struct MemoryDesc([u8; 1024]);
/// Room for an operation descriptor (`dnnl_convolution_desc_t`, `dnnl_matmul_desc_t`).
#[repr(C, align(64))]
struct OpDesc([u8; 8192]);

#[repr(C)]
struct ExecArg {
    arg: i32,
    memory: *mut c_void,
}

type Handle = *mut c_void;
type Status = i32;

const F32: i32 = 3;
const TAG_ANY: i32 = 1;
const TAG_A: i32 = 2;
const TAG_AB: i32 = 3;
const TAG_ABCD: i32 = 5;
const ENGINE_CPU: i32 = 1;
const STREAM_DEFAULT: u32 = 1;
const FORWARD_INFERENCE: i32 = 96;
const CONVOLUTION_DIRECT: i32 = 1;
const FPMATH_BF16: i32 = 1;
const QUERY_SRC_MD: i32 = 129;
const QUERY_WEIGHTS_MD: i32 = 131;
const QUERY_DST_MD: i32 = 133;
const QUERY_SCRATCHPAD_MD: i32 = 136;
const ARG_SRC: i32 = 1;
const ARG_DST: i32 = 17;
const ARG_WEIGHTS: i32 = 33;
const ARG_BIAS: i32 = 41;
const ARG_SCRATCHPAD: i32 = 80;
const ARG_FROM: i32 = ARG_SRC;
const ARG_TO: i32 = ARG_DST;
const SCRATCHPAD_USER: i32 = 1;

#[link(name = "dnnl")]
unsafe extern "C" {
    fn dnnl_engine_create(engine: *mut Handle, kind: i32, index: usize) -> Status;
    fn dnnl_engine_destroy(engine: Handle) -> Status;
    fn dnnl_stream_create(stream: *mut Handle, engine: Handle, flags: u32) -> Status;
    fn dnnl_stream_destroy(stream: Handle) -> Status;
    fn dnnl_memory_desc_init_by_tag(
        md: *mut MemoryDesc,
        ndims: i32,
        dims: *const i64,
        data_type: i32,
        tag: i32,
    ) -> Status;
    fn dnnl_convolution_forward_desc_init(
        desc: *mut OpDesc,
        prop_kind: i32,
        alg_kind: i32,
        src: *const MemoryDesc,
        weights: *const MemoryDesc,
        bias: *const MemoryDesc,
        dst: *const MemoryDesc,
        strides: *const i64,
        padding_l: *const i64,
        padding_r: *const i64,
    ) -> Status;
    fn dnnl_matmul_desc_init(
        desc: *mut OpDesc,
        src: *const MemoryDesc,
        weights: *const MemoryDesc,
        bias: *const MemoryDesc,
        dst: *const MemoryDesc,
    ) -> Status;
    fn dnnl_primitive_attr_create(attr: *mut Handle) -> Status;
    fn dnnl_primitive_attr_destroy(attr: Handle) -> Status;
    fn dnnl_primitive_attr_set_fpmath_mode(attr: Handle, mode: i32) -> Status;
    fn dnnl_primitive_attr_set_scratchpad_mode(attr: Handle, mode: i32) -> Status;
    fn dnnl_primitive_desc_create(
        pd: *mut Handle,
        op: *const OpDesc,
        attr: Handle,
        engine: Handle,
        hint: Handle,
    ) -> Status;
    fn dnnl_reorder_primitive_desc_create(
        pd: *mut Handle,
        src: *const MemoryDesc,
        src_engine: Handle,
        dst: *const MemoryDesc,
        dst_engine: Handle,
        attr: Handle,
    ) -> Status;
    fn dnnl_primitive_desc_query_md(pd: Handle, what: i32, index: i32) -> *const MemoryDesc;
    fn dnnl_primitive_desc_destroy(pd: Handle) -> Status;
    fn dnnl_primitive_create(primitive: *mut Handle, pd: Handle) -> Status;
    fn dnnl_primitive_destroy(primitive: Handle) -> Status;
    fn dnnl_primitive_execute(
        primitive: Handle,
        stream: Handle,
        nargs: i32,
        args: *const ExecArg,
    ) -> Status;
    fn dnnl_memory_create(
        memory: *mut Handle,
        md: *const MemoryDesc,
        engine: Handle,
        buffer: *mut c_void,
    ) -> Status;
    fn dnnl_memory_destroy(memory: Handle) -> Status;
    fn dnnl_memory_desc_equal(a: *const MemoryDesc, b: *const MemoryDesc) -> i32;
    fn dnnl_memory_desc_get_size(md: *const MemoryDesc) -> usize;
    fn dnnl_stream_wait(stream: Handle) -> Status;
    fn dnnl_get_effective_cpu_isa() -> i32;
}

fn check(call: &str, status: Status) -> Result<(), String> {
    match status {
        0 => Ok(()),
        s => Err(format!("oneDNN {call} failed with status {s}")),
    }
}

/// The instruction set oneDNN dispatches to here (its `dnnl_cpu_isa_t`, e.g. `avx512_core_bf16`).
pub fn effective_isa() -> &'static str {
    // SAFETY: a query without arguments.
    match unsafe { dnnl_get_effective_cpu_isa() } {
        0x3e7 => "avx512_core_amx",
        0xe7 => "avx512_core_bf16",
        0x67 => "avx512_core_vnni",
        0x27 => "avx512_core",
        0x407 => "avx2_vnni",
        0x7 => "avx2",
        _ => "other",
    }
}

/// A CPU engine and its stream.
struct Runtime {
    engine: Handle,
    stream: Handle,
}

impl Runtime {
    fn new() -> Result<Self, String> {
        let (mut engine, mut stream) = (null_mut(), null_mut());
        // SAFETY: out-pointers to handles.
        unsafe {
            check(
                "engine_create",
                dnnl_engine_create(&mut engine, ENGINE_CPU, 0),
            )?;
            check(
                "stream_create",
                dnnl_stream_create(&mut stream, engine, STREAM_DEFAULT),
            )?;
        }
        Ok(Runtime { engine, stream })
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            dnnl_stream_destroy(self.stream);
            dnnl_engine_destroy(self.engine);
        }
    }
}

fn memory_desc(dims: &[i64], tag: i32) -> Result<Box<MemoryDesc>, String> {
    let mut md = Box::new(MemoryDesc([0; 1024]));
    let mut all = [0i64; 12];
    all[..dims.len()].copy_from_slice(dims);
    // SAFETY: `md` has room for the descriptor; `all` is a dnnl_dims_t.
    let status = unsafe {
        dnnl_memory_desc_init_by_tag(&mut *md, dims.len() as i32, all.as_ptr(), F32, tag)
    };
    check("memory_desc_init_by_tag", status)?;
    Ok(md)
}

/// One argument of a primitive: the user's plain buffer, and where the primitive wants another
/// layout, its own buffer and the reorder between them (built once).
struct Operand {
    user: Box<MemoryDesc>,
    inner: Option<(Box<MemoryDesc>, Handle, Vec<f32>)>,
}

impl Operand {
    /// `user` as the primitive `pd` wants the argument it describes as `(query, index)`
    /// (`to_inner`: reorder user -> inner).
    fn new(
        rt: &Runtime,
        user: Box<MemoryDesc>,
        pd: Handle,
        (what, index): (i32, i32),
        to_inner: bool,
    ) -> Result<Self, String> {
        // SAFETY: `pd` is a live primitive descriptor; the queried md lives as long as it.
        let wanted = unsafe { &*dnnl_primitive_desc_query_md(pd, what, index) };
        // SAFETY: both descriptors are initialised.
        if unsafe { dnnl_memory_desc_equal(&*user, wanted) } != 0 {
            return Ok(Operand { user, inner: None });
        }
        let inner = Box::new(MemoryDesc(wanted.0));
        let (from, to): (&MemoryDesc, &MemoryDesc) = if to_inner {
            (&user, &inner)
        } else {
            (&inner, &user)
        };
        let (mut reorder_pd, mut reorder) = (null_mut(), null_mut());
        // SAFETY: initialised descriptors, out-pointers to handles.
        unsafe {
            check(
                "reorder_primitive_desc_create",
                dnnl_reorder_primitive_desc_create(
                    &mut reorder_pd,
                    from,
                    rt.engine,
                    to,
                    rt.engine,
                    null_mut(),
                ),
            )?;
            let status = dnnl_primitive_create(&mut reorder, reorder_pd);
            dnnl_primitive_desc_destroy(reorder_pd);
            check("primitive_create (reorder)", status)?;
        }
        // SAFETY: initialised descriptor.
        let floats = unsafe { dnnl_memory_desc_get_size(&*inner) }.div_ceil(4);
        Ok(Operand {
            user,
            inner: Some((inner, reorder, vec![0f32; floats])),
        })
    }
}

impl Drop for Operand {
    fn drop(&mut self) {
        if let Some((_, reorder, _)) = &self.inner {
            // SAFETY: created in `new`, destroyed once.
            unsafe { dnnl_primitive_destroy(*reorder) };
        }
    }
}

/// A memory object over `data` (not owned).
struct Memory(Handle);

impl Memory {
    fn wrap(rt: &Runtime, md: &MemoryDesc, data: *mut f32) -> Result<Self, String> {
        let mut memory = null_mut();
        // SAFETY: `data` holds the descriptor's size (checked by the callers).
        check("memory_create", unsafe {
            dnnl_memory_create(&mut memory, md, rt.engine, data.cast())
        })?;
        Ok(Memory(memory))
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: created in `wrap`, destroyed once; the buffer is not freed by it.
        unsafe { dnnl_memory_destroy(self.0) };
    }
}

/// An argument of a primitive: its number, the user's descriptor, the query (and index) of
/// the primitive's descriptor, and whether it is read (else written).
type Arg = (i32, Box<MemoryDesc>, (i32, i32), bool);

/// A primitive with its operands in order (`(arg, operand, reorder user -> inner)`).
struct Primitive {
    rt: Runtime,
    primitive: Handle,
    operands: Vec<(i32, Operand, bool)>,
    scratchpad: Option<(Box<MemoryDesc>, Vec<f32>)>,
}

impl Primitive {
    /// Builds the primitive of `op`, its operands with `(arg, user md, (query, index), input)`.
    fn new(rt: Runtime, op: &OpDesc, bf16: bool, args: Vec<Arg>) -> Result<Self, String> {
        let (mut attr, mut pd, mut primitive) = (null_mut(), null_mut(), null_mut());
        // SAFETY: out-pointers to handles; `op` initialised by the caller.
        unsafe {
            check(
                "primitive_attr_create",
                dnnl_primitive_attr_create(&mut attr),
            )?;
            if bf16 {
                check(
                    "set_fpmath_mode",
                    dnnl_primitive_attr_set_fpmath_mode(attr, FPMATH_BF16),
                )?;
            }
            check(
                "set_scratchpad_mode",
                dnnl_primitive_attr_set_scratchpad_mode(attr, SCRATCHPAD_USER),
            )?;
            let status = dnnl_primitive_desc_create(&mut pd, op, attr, rt.engine, null_mut());
            dnnl_primitive_attr_destroy(attr);
            check("primitive_desc_create", status)?;
        }
        let built: Result<_, String> = (|| {
            let mut operands = Vec::new();
            for (arg, user, query, input) in args {
                operands.push((arg, Operand::new(&rt, user, pd, query, input)?, input));
            }
            // SAFETY: live primitive descriptor; the md is copied before it is destroyed.
            let scratch = unsafe {
                MemoryDesc((*dnnl_primitive_desc_query_md(pd, QUERY_SCRATCHPAD_MD, 0)).0)
            };
            // SAFETY: initialised descriptor.
            let bytes = unsafe { dnnl_memory_desc_get_size(&scratch) };
            let scratchpad =
                (bytes > 0).then(|| (Box::new(scratch), vec![0f32; bytes.div_ceil(4)]));
            // SAFETY: out-pointer; live descriptor.
            check("primitive_create", unsafe {
                dnnl_primitive_create(&mut primitive, pd)
            })?;
            Ok((operands, scratchpad))
        })();
        // SAFETY: created above, destroyed once (the primitive keeps what it needs).
        unsafe { dnnl_primitive_desc_destroy(pd) };
        let (operands, scratchpad) = built?;
        Ok(Primitive {
            rt,
            primitive,
            operands,
            scratchpad,
        })
    }

    /// Runs on the user buffers, in the operands' order (their sizes checked by the callers).
    fn execute(&mut self, buffers: &[*mut f32]) -> Result<(), String> {
        let rt = &self.rt;
        let mut args = Vec::new();
        let mut keep = Vec::new();
        let mut after = Vec::new();
        for ((arg, operand, input), &data) in self.operands.iter_mut().zip(buffers) {
            let user = Memory::wrap(rt, &operand.user, data)?;
            match &mut operand.inner {
                None => args.push(ExecArg {
                    arg: *arg,
                    memory: user.0,
                }),
                Some((md, reorder, buffer)) => {
                    let inner = Memory::wrap(rt, md, buffer.as_mut_ptr())?;
                    args.push(ExecArg {
                        arg: *arg,
                        memory: inner.0,
                    });
                    let (from, to) = if *input {
                        (user.0, inner.0)
                    } else {
                        (inner.0, user.0)
                    };
                    let step = [
                        ExecArg {
                            arg: ARG_FROM,
                            memory: from,
                        },
                        ExecArg {
                            arg: ARG_TO,
                            memory: to,
                        },
                    ];
                    if *input {
                        // SAFETY: live primitive and memories.
                        check("reorder", unsafe {
                            dnnl_primitive_execute(*reorder, rt.stream, 2, step.as_ptr())
                        })?;
                    } else {
                        after.push((*reorder, step));
                    }
                    keep.push(inner);
                }
            }
            keep.push(user);
        }
        if let Some((md, buffer)) = &mut self.scratchpad {
            let memory = Memory::wrap(rt, md, buffer.as_mut_ptr())?;
            args.push(ExecArg {
                arg: ARG_SCRATCHPAD,
                memory: memory.0,
            });
            keep.push(memory);
        }
        // SAFETY: live primitive; the memories outlive the calls (`keep`).
        unsafe {
            check(
                "execute",
                dnnl_primitive_execute(self.primitive, rt.stream, args.len() as i32, args.as_ptr()),
            )?;
            for (reorder, step) in &after {
                check(
                    "reorder",
                    dnnl_primitive_execute(*reorder, rt.stream, 2, step.as_ptr()),
                )?;
            }
            check("stream_wait", dnnl_stream_wait(rt.stream))?;
        }
        Ok(())
    }
}

impl Drop for Primitive {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { dnnl_primitive_destroy(self.primitive) };
    }
}

/// oneDNN's convolution forward for one [`ConvShape`](crate::ConvShape), built once; the
/// layouts it prefers (chosen by the library) are reached by reorders on every call.
pub struct Convolution {
    shape: crate::ConvShape,
    primitive: Primitive,
}

impl Convolution {
    /// With bf16 products where `bf16` (f32 buffers either way).
    pub fn new(shape: crate::ConvShape, bf16: bool) -> Result<Self, String> {
        let s = shape;
        let [b, ci, h, w, co, kh, kw] = [
            s.batch,
            s.channels_in,
            s.height,
            s.width,
            s.channels_out,
            s.kernel_h,
            s.kernel_w,
        ]
        .map(|d| d as i64);
        let [oh, ow] = [s.out_height(), s.out_width()].map(|d| d as i64);
        let user: Vec<Arg> = vec![
            (
                ARG_SRC,
                memory_desc(&[b, ci, h, w], TAG_ABCD)?,
                (QUERY_SRC_MD, 0),
                true,
            ),
            (
                ARG_WEIGHTS,
                memory_desc(&[co, ci, kh, kw], TAG_ABCD)?,
                (QUERY_WEIGHTS_MD, 0),
                true,
            ),
            (
                ARG_BIAS,
                memory_desc(&[co], TAG_A)?,
                (QUERY_WEIGHTS_MD, 1),
                true,
            ),
            (
                ARG_DST,
                memory_desc(&[b, co, oh, ow], TAG_ABCD)?,
                (QUERY_DST_MD, 0),
                false,
            ),
        ];
        let any = |dims: &[i64]| memory_desc(dims, TAG_ANY);
        let (src, weights, dst) = (
            any(&[b, ci, h, w])?,
            any(&[co, ci, kh, kw])?,
            any(&[b, co, oh, ow])?,
        );
        let mut dims = [[0i64; 12]; 3];
        for axis in 0..2 {
            dims[0][axis] = s.stride[axis] as i64;
            dims[1][axis] = s.padding[axis] as i64;
            dims[2][axis] = s.padding[axis] as i64;
        }
        let mut op = Box::new(OpDesc([0; 8192]));
        // SAFETY: initialised descriptors; `op` has room.
        let status = unsafe {
            dnnl_convolution_forward_desc_init(
                &mut *op,
                FORWARD_INFERENCE,
                CONVOLUTION_DIRECT,
                &*src,
                &*weights,
                &*user[2].1,
                &*dst,
                dims[0].as_ptr(),
                dims[1].as_ptr(),
                dims[2].as_ptr(),
            )
        };
        check("convolution_forward_desc_init", status)?;
        let primitive = Primitive::new(Runtime::new()?, &op, bf16, user)?;
        Ok(Convolution { shape, primitive })
    }

    /// `out = conv(x, weight) + bias`, buffers as [`crate::conv2d_forward`]'s.
    pub fn forward(
        &mut self,
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        out: &mut [f32],
    ) -> Result<(), String> {
        let s = self.shape;
        assert_eq!(
            x.len(),
            s.batch * s.channels_in * s.height * s.width,
            "conv input size"
        );
        assert_eq!(weight.len(), s.weight_len(), "conv weight size");
        assert_eq!(bias.len(), s.channels_out, "conv bias size");
        assert_eq!(out.len(), s.output_len(), "conv output size");
        let buffers = [
            x.as_ptr().cast_mut(),
            weight.as_ptr().cast_mut(),
            bias.as_ptr().cast_mut(),
            out.as_mut_ptr(),
        ];
        self.primitive.execute(&buffers)
    }
}

/// oneDNN's matrix product `out [m, n] = lhs [m, k] rhs [k, n]`, row-major, built once.
pub struct MatMul {
    dims: [usize; 3],
    primitive: Primitive,
}

impl MatMul {
    /// With bf16 products where `bf16` (f32 buffers either way).
    pub fn new(m: usize, n: usize, k: usize, bf16: bool) -> Result<Self, String> {
        let [mi, ni, ki] = [m, n, k].map(|d| d as i64);
        let (src, weights, dst) = (
            memory_desc(&[mi, ki], TAG_AB)?,
            memory_desc(&[ki, ni], TAG_AB)?,
            memory_desc(&[mi, ni], TAG_AB)?,
        );
        let mut op = Box::new(OpDesc([0; 8192]));
        // SAFETY: initialised descriptors; `op` has room.
        let status = unsafe { dnnl_matmul_desc_init(&mut *op, &*src, &*weights, null(), &*dst) };
        check("matmul_desc_init", status)?;
        let args: Vec<Arg> = vec![
            (ARG_SRC, src, (QUERY_SRC_MD, 0), true),
            (ARG_WEIGHTS, weights, (QUERY_WEIGHTS_MD, 0), true),
            (ARG_DST, dst, (QUERY_DST_MD, 0), false),
        ];
        Ok(MatMul {
            dims: [m, n, k],
            primitive: Primitive::new(Runtime::new()?, &op, bf16, args)?,
        })
    }

    pub fn forward(&mut self, lhs: &[f32], rhs: &[f32], out: &mut [f32]) -> Result<(), String> {
        let [m, n, k] = self.dims;
        assert_eq!(
            (lhs.len(), rhs.len(), out.len()),
            (m * k, k * n, m * n),
            "matmul sizes"
        );
        self.primitive.execute(&[
            lhs.as_ptr().cast_mut(),
            rhs.as_ptr().cast_mut(),
            out.as_mut_ptr(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::{max_rel, pseudo_random};
    use crate::{ConvShape, conv2d_forward};

    /// oneDNN's convolution agrees with ours (f32), with bias, stride and padding.
    #[test]
    fn onednn_convolution_matches_ours() {
        for (stride, padding, kernel) in [(1, 1, 3), (2, 1, 3), (1, 0, 1)] {
            let s = ConvShape {
                batch: 3,
                channels_in: 5,
                height: 9,
                width: 7,
                channels_out: 6,
                kernel_h: kernel,
                kernel_w: kernel,
                stride: [stride, stride],
                padding: [padding, padding],
            };
            let x = pseudo_random(3 * 5 * 9 * 7, 1, 1.0, 0.0);
            let w = pseudo_random(s.weight_len(), 2, 1.0, 0.0);
            let bias = pseudo_random(6, 3, 1.0, 0.0);
            let (mut ours, mut theirs) = (vec![0f32; s.output_len()], vec![0f32; s.output_len()]);
            conv2d_forward(&x, &w, Some(&bias), s, &mut ours);
            let mut conv = Convolution::new(s, false).expect("oneDNN convolution");
            conv.forward(&x, &w, &bias, &mut theirs)
                .expect("oneDNN run");
            let want: Vec<f64> = ours.iter().map(|&v| v as f64).collect();
            assert!(
                max_rel(&theirs, &want) < 1e-5,
                "{s:?}: {}",
                max_rel(&theirs, &want)
            );
        }
    }

    /// oneDNN's matrix product against f64 sums; in bf16 within bf16 rounding.
    #[test]
    fn onednn_matmul_matches_f64() {
        let (m, n, k) = (37, 29, 70);
        let lhs = pseudo_random(m * k, 4, 1.0, 0.0);
        let rhs = pseudo_random(k * n, 5, 1.0, 0.0);
        let want: Vec<f64> = (0..m * n)
            .map(|e| {
                (0..k)
                    .map(|p| lhs[e / n * k + p] as f64 * rhs[p * n + e % n] as f64)
                    .sum()
            })
            .collect();
        for (bf16, tolerance) in [(false, 1e-6), (true, 2e-2)] {
            let mut out = vec![0f32; m * n];
            let mut product = MatMul::new(m, n, k, bf16).expect("oneDNN matmul");
            product.forward(&lhs, &rhs, &mut out).expect("oneDNN run");
            assert!(
                max_rel(&out, &want) < tolerance,
                "bf16 {bf16}: {}",
                max_rel(&out, &want)
            );
        }
    }
}
