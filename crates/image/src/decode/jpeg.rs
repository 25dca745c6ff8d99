//! JPEG through libjpeg (the `mozjpeg-sys` build of libjpeg-turbo's decoder, plain C, no SIMD), set
//! up as Pillow 9.3's `JpegDecode.c` does: default ISLOW integer IDCT and fancy upsampling, output
//! colour space GRAYSCALE / RGB / CMYK for 1 / 3 / 4 components, and Pillow's "CMYK;I" rawmode
//! (all four channels inverted, "assume adobe conventions") for every 4-component file.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return; here it unwinds
//! (`mozjpeg-sys` compiles the C code with `-fexceptions` for this) and the unwind is caught at the
//! decode boundary and turned into an [`ImageError`]. Warnings are ignored as Pillow ignores them,
//! except "Premature end of JPEG file", which is reported as truncation.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_ulong};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg_sys as ffi;

use super::{build_u8, Ctx};
use crate::error::ImageError;
use crate::source::{PilMode, SourceImage};

/// Scans the markers up to the first SOFn and returns its width and height.
pub(super) fn header_size(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u64, u64), ImageError> {
    let (w, h, _, _) = sof(bytes, ctx)?;
    Ok((u64::from(w), u64::from(h)))
}

/// `(width, height, components, precision)` of the first frame header.
fn sof(bytes: &[u8], ctx: Ctx<'_>) -> Result<(u16, u16, u8, u8), ImageError> {
    let mut i = 2; // after SOI
    loop {
        // Find the next marker: 0xFF, any fill 0xFFs, then the code.
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&code) = bytes.get(i) else {
            return Err(ctx.decode_err("no frame header (SOF marker) before end of file"));
        };
        i += 1;
        match code {
            0x00 | 0x01 | 0xD0..=0xD8 => continue, // stuffed byte, TEM, RSTn, SOI: no length
            0xD9 => return Err(ctx.decode_err("end of image before any frame header")),
            _ => {}
        }
        let len = match bytes.get(i..i + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(ctx.truncated()),
        };
        if len < 2 {
            return Err(ctx.decode_err(format!("marker 0xFF{code:02X} has bad length {len}")));
        }
        let is_sof = matches!(code, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF);
        if is_sof {
            let seg = bytes.get(i + 2..i + 8).ok_or_else(|| ctx.truncated())?;
            let precision = seg[0];
            let h = u16::from_be_bytes([seg[1], seg[2]]);
            let w = u16::from_be_bytes([seg[3], seg[4]]);
            return Ok((w, h, seg[5], precision));
        }
        i += len;
    }
}

/// Payload of the unwind raised from libjpeg's callbacks.
struct JpegFailure(String);

/// The size of the buffer libjpeg's `format_message` writes into: libjpeg-turbo's
/// `JMSG_LENGTH_MAX` (jpeglib.h), the size it passes to `snprintf`. (The binding's type of the
/// callback says `&[u8; 80]`, the value of old libjpeg versions.)
const JMSG_LENGTH_MAX: usize = 200;

/// libjpeg's `format_message` writes into the buffer it is given; the binding's type says
/// `&[u8; 80]` (a shared reference, which must not be written through), so it is called through
/// this pointer-typed alias instead. The two function-pointer types differ only in that
/// parameter, one thin data pointer either way in the C ABI, and the function behind both is C's
/// `void (*)(j_common_ptr, char *)`, so transmuting one into the other is sound.
type FormatMessage = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8);

/// The text of libjpeg's current message (`err->msg_code` and its parameters).
///
/// # Safety
/// `cinfo.err` must be null or point to a live `jpeg_error_mgr` whose `format_message` is null
/// or libjpeg's own (as set by `jpeg_std_error`), which writes at most [`JMSG_LENGTH_MAX`] bytes.
unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let mut buf = [0u8; JMSG_LENGTH_MAX];
    let err = cinfo.err;
    if !err.is_null() {
        // SAFETY: `err` is non-null and, by this function's contract, points to a live error
        // manager; its `format_message` may be called as a `FormatMessage` (see there); `buf`
        // has the `JMSG_LENGTH_MAX` bytes that libjpeg's `snprintf` may write, NUL included.
        if let Some(f) = (*err).format_message {
            let f: FormatMessage = std::mem::transmute(f);
            f(cinfo, buf.as_mut_ptr());
        }
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown libjpeg error".to_string())
}

/// libjpeg's fatal-error callback: it must not return, so it unwinds with a [`JpegFailure`] to
/// the `catch_unwind` in [`decode`] (through the C frames, compiled with `-fexceptions`, which
/// the `C-unwind` ABI allows).
///
/// # Safety
/// Only for libjpeg to call, on the decompressor that [`decode`] set up (its `err` is our error
/// manager, filled by `jpeg_std_error`), inside that `catch_unwind`.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: `cinfo.err` is the live, `jpeg_std_error`-initialised manager of `decode`.
    let msg = message(cinfo);
    resume_unwind(Box::new(JpegFailure(msg)));
}

/// libjpeg's warning / trace callback: ignores traces and warnings, except that "Premature end of
/// JPEG file" unwinds as [`error_exit`] does.
///
/// # Safety
/// As [`error_exit`]: only for libjpeg to call on the decompressor of [`decode`], inside its
/// `catch_unwind`.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level < 0 {
        // SAFETY: `cinfo.err` is the live, `jpeg_std_error`-initialised manager of `decode`.
        let msg = message(cinfo);
        if msg.starts_with("Premature end of JPEG file") {
            resume_unwind(Box::new(JpegFailure(
                "file is truncated (premature end of JPEG data)".into(),
            )));
        }
        // Other warnings ("Corrupt JPEG data: ...") are ignored, as Pillow ignores them.
    }
}

/// libjpeg's message printer: prints nothing.
///
/// # Safety
/// None needed (it does nothing); `unsafe` only because the binding's callback type is.
unsafe extern "C-unwind" fn output_message(_cinfo: &mut ffi::jpeg_common_struct) {}

/// Owns the libjpeg decompressor so that it is destroyed on every exit path.
struct Decompressor {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _err: Box<ffi::jpeg_error_mgr>,
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // Destroying after an error is what libjpeg documents; it only frees memory.
        // SAFETY: a `Decompressor` is only built after `jpeg_create_decompress` succeeded, so
        // `cinfo` is a created decompressor (in any state, even after an unwind out of libjpeg),
        // destroyed exactly once, here; its `err` points into `_err`, which is dropped only
        // after this. An unwind from libjpeg's error callbacks is caught here, so none escapes
        // `drop`.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
            ffi::jpeg_destroy_decompress(&mut self.cinfo);
        }));
    }
}

pub(super) fn decode(bytes: &[u8], ctx: Ctx<'_>) -> Result<SourceImage, ImageError> {
    let (w16, h16, components, precision) = sof(bytes, ctx)?;
    let (w, h) = ctx.check_size(u64::from(w16), u64::from(h16))?;
    if precision != 8 {
        return Err(ctx.unsupported(format!(
            "{precision}-bit samples (Pillow reads only 8-bit JPEG)"
        )));
    }
    let (out_space, mode, channels) = match components {
        1 => (ffi::J_COLOR_SPACE::JCS_GRAYSCALE, PilMode::L, 1usize),
        3 => (ffi::J_COLOR_SPACE::JCS_RGB, PilMode::Rgb, 3),
        4 => (ffi::J_COLOR_SPACE::JCS_CMYK, PilMode::Cmyk, 4),
        n => return Err(ctx.unsupported(format!("{n}-component image"))),
    };
    let len = c_ulong::try_from(bytes.len()).map_err(|_| ctx.decode_err("file too large"))?;

    // SAFETY: the libjpeg calls below follow its documented sequence (std_error, create,
    // mem_src, read_header, start_decompress, read_scanlines), each on the created decompressor:
    // - the all-zero `jpeg_error_mgr` and `jpeg_decompress_struct` are valid values (null
    //   pointers and callbacks, zero numbers, and 0 is a variant of each binding enum:
    //   JCS_UNKNOWN, JDCT_ISLOW, JDITHER_NONE); libjpeg initialises them;
    // - both structs are boxed, so the `cinfo.common.err` pointer and libjpeg's internal
    //   pointers stay valid when they move into `d`, which owns them until the end of this
    //   closure (also when it unwinds) and then destroys the decompressor before the error
    //   manager is freed;
    // - `jpeg_mem_src` keeps a pointer to `bytes`, which outlives `d`, and only reads
    //   `len` = `bytes.len()` bytes of it;
    // - each `jpeg_read_scanlines` writes one row of `output_width × output_components`
    //   bytes (checked after `jpeg_start_decompress` to be `stride`) at row
    //   `output_scanline < output_height = h`, so within `out` (`stride × h` bytes);
    // - libjpeg's fatal errors unwind (`error_exit`) through its C frames, built with
    //   `-fexceptions` and declared `C-unwind`, and are caught right here; nothing of the
    //   half-finished decoder is used after that except its destruction.
    let result = catch_unwind(AssertUnwindSafe(|| unsafe {
        let mut err: Box<ffi::jpeg_error_mgr> = Box::new(MaybeUninit::zeroed().assume_init());
        ffi::jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err.output_message = Some(output_message);
        let mut cinfo: Box<ffi::jpeg_decompress_struct> =
            Box::new(MaybeUninit::zeroed().assume_init());
        cinfo.common.err = &mut *err;
        ffi::jpeg_create_decompress(&mut *cinfo);
        let mut d = Decompressor { cinfo, _err: err };
        let cinfo = &mut *d.cinfo;
        ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), len);
        ffi::jpeg_read_header(cinfo, 1);
        if cinfo.image_width != w
            || cinfo.image_height != h
            || cinfo.num_components != components as c_int
        {
            return Err(
                "frame header read by libjpeg differs from the first SOF marker".to_string(),
            );
        }
        cinfo.out_color_space = out_space;
        cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
        cinfo.do_fancy_upsampling = 1;
        ffi::jpeg_start_decompress(cinfo);
        if cinfo.output_width != w
            || cinfo.output_height != h
            || cinfo.output_components != channels as c_int
        {
            return Err("unexpected output geometry from libjpeg".to_string());
        }
        let stride = w as usize * channels;
        let mut out = vec![0u8; stride * h as usize];
        while cinfo.output_scanline < cinfo.output_height {
            let row = cinfo.output_scanline as usize;
            let mut ptr = out[row * stride..].as_mut_ptr();
            if ffi::jpeg_read_scanlines(cinfo, &mut ptr, 1) != 1 {
                return Err("libjpeg returned no scanline".to_string());
            }
        }
        // Pillow stops after the last scanline (no jpeg_finish_decompress): a missing EOI is fine.
        Ok(out)
    }));
    let mut data = match result {
        Ok(Ok(data)) => data,
        Ok(Err(reason)) => return Err(ctx.decode_err(reason)),
        Err(payload) => match payload.downcast::<JpegFailure>() {
            Ok(f) => return Err(ctx.decode_err(f.0)),
            Err(other) => resume_unwind(other),
        },
    };
    if mode == PilMode::Cmyk {
        for v in &mut data {
            *v = 255 - *v;
        }
    }
    build_u8(ctx, w, h, mode, data)
}
