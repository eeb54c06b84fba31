//! Output files written atomically (temp file in the target folder, renamed into place
//! once complete), and a protobuf sink that streams an encoding to such a file.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::buf::UninitSlice;
use bytes::BufMut;

use crate::error::{Error, Result};

/// Temp files are `.<target name>` + this + the writer's process id.
const TMP_TAG: &str = ".onnxq-tmp-";

/// Removes temp files whose writer is gone (killed before it could clean up): a
/// process that no longer exists will never rename or remove them.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(TMP_TAG))
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && !process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// A file being written under a temporary name next to its final path. Dropped
/// without `commit`, the temp file is removed: an error never leaves a partial output.
pub struct AtomicFile {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    written: u64,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<Self> {
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = target
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a file path", target.display())))?
            .to_string_lossy();
        remove_stale_temps(dir);
        let tmp = dir.join(format!(".{name}{TMP_TAG}{}", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            written: 0,
        })
    }

    pub fn position(&self) -> u64 {
        self.written
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("file open until commit");
        f.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads with zeros up to a multiple of `align`.
    pub fn align_to(&mut self, align: u64) -> Result<()> {
        let pad = (align - self.written % align) % align;
        if pad > 0 {
            self.write_all(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the temp file over the target.
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().expect("file open until commit");
        let file = f
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        Ok(())
    }

    /// Flushes and syncs, returning a handle to rename later (so several files can be
    /// completed first and made visible together, data before model).
    pub fn finish(mut self) -> Result<PendingRename> {
        let f = self.file.take().expect("file open until commit");
        let file = f
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        Ok(PendingRename {
            tmp: std::mem::take(&mut self.tmp),
            target: std::mem::take(&mut self.target),
        })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() && !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A complete temp file waiting to be renamed into place; removed if dropped.
pub struct PendingRename {
    tmp: PathBuf,
    target: PathBuf,
}

impl PendingRename {
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for PendingRename {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A `BufMut` that streams into an `AtomicFile` through a fixed buffer, so encoding a
/// large model never holds the whole encoding in memory.
pub struct ProtoSink<'a> {
    out: &'a mut AtomicFile,
    buf: Vec<u8>,
    error: Option<Error>,
}

const SINK_BUF: usize = 1 << 20;

impl<'a> ProtoSink<'a> {
    pub fn new(out: &'a mut AtomicFile) -> Self {
        ProtoSink {
            out,
            buf: Vec::with_capacity(SINK_BUF),
            error: None,
        }
    }

    fn flush_buf(&mut self) {
        if self.error.is_none() && !self.buf.is_empty() {
            if let Err(e) = self.out.write_all(&self.buf) {
                self.error = Some(e);
            }
        }
        self.buf.clear();
    }

    pub fn finish(mut self) -> Result<()> {
        self.flush_buf();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

// Safety: `chunk_mut` hands out the spare capacity of `buf`, and `advance_mut` only
// grows `buf`'s length over bytes the caller has just written there.
unsafe impl BufMut for ProtoSink<'_> {
    fn remaining_mut(&self) -> usize {
        usize::MAX / 2
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity());
        // SAFETY: the caller initialised `cnt` bytes of the spare capacity.
        unsafe { self.buf.set_len(len) };
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    /// Contiguous chunks go through `put_slice` (large ones straight to the file);
    /// pages of spilled tensors (the raw_data of inline initializers) are dropped
    /// once written.
    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            self.put_slice(chunk);
            if n >= SINK_BUF && super::spill::is_spilled(chunk) {
                release_pages(chunk);
            }
            src.advance(n);
        }
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SINK_BUF {
            self.flush_buf();
            if self.error.is_none() {
                if let Err(e) = self.out.write_all(src) {
                    self.error = Some(e);
                }
            }
            return;
        }
        if self.buf.len() + src.len() > self.buf.capacity() {
            self.flush_buf();
        }
        self.buf.extend_from_slice(src);
    }
}

/// Drops the resident pages of a read-only file map covering `bytes` (they refault
/// from the file if read again). Reading a multi-GB model through a map would
/// otherwise count every touched page as resident memory.
pub fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        let page = 4096usize;
        let start = bytes.as_ptr() as usize;
        let end = start + bytes.len();
        let first = start.div_ceil(page) * page;
        let last = end / page * page;
        if last > first {
            // SAFETY: advisory call on whole pages inside a live mapping; on an
            // anonymous (heap) range DONTNEED would zero memory, so callers only pass
            // slices of file maps (see `is_file_backed`).
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
}
