//! Spilling: large tensors a pass produces go to an unlinked temporary file as soon as
//! they exist, and their `Bytes` become a read-only map of their page-aligned region.
//! A model waiting to be saved then holds its new weights in the page cache, not in
//! process memory; the save copies them out and drops the pages it touched
//! ([`super::release_pages`]), so peak memory stays near the largest few tensors.
//! Bytes are the same either way: spilling changes where they live, never what they are.
//!
//! Settings, read once per process from the environment:
//! - `ONNXQ_SPILL=off`: never spill (everything stays in memory);
//! - `ONNXQ_SPILL_MIN_BYTES=N`: spill tensors of at least N bytes (default 1 MiB);
//! - `ONNXQ_SPILL_DIR=DIR`: where the file goes (default: the system temp folder).
//!
//! [`set_min_bytes`] and [`set_dir`] set the same from code.
//!
//! If the file cannot be created or written, tensors stay in memory (same bytes).
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

/// Tensors smaller than this stay in memory unless `ONNXQ_SPILL_MIN_BYTES` says otherwise.
pub const DEFAULT_MIN_BYTES: usize = 1 << 20;
const PAGE: u64 = 4096;

/// The setting once read or set: the smallest tensor that spills, None when off.
static MIN: Mutex<Option<Option<usize>>> = Mutex::new(None);

/// The smallest tensor that spills, or None when spilling is off.
pub fn min_bytes() -> Option<usize> {
    let Ok(mut m) = MIN.lock() else { return None };
    *m.get_or_insert_with(|| {
        if std::env::var("ONNXQ_SPILL").is_ok_and(|v| v.eq_ignore_ascii_case("off") || v == "0") {
            return None;
        }
        Some(
            std::env::var("ONNXQ_SPILL_MIN_BYTES")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(DEFAULT_MIN_BYTES)
                .max(1),
        )
    })
}

/// Overrides the environment: spill tensors of at least `min` bytes, or never (None).
pub fn set_min_bytes(min: Option<usize>) {
    if let Ok(mut m) = MIN.lock() {
        *m = Some(min.map(|n| n.max(1)));
    }
}

static DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Puts the spill file in `dir` (e.g. the output's folder, on the disk that will hold
/// the result anyway) if no spill file exists yet and `ONNXQ_SPILL_DIR` is unset.
pub fn set_dir(dir: &Path) {
    if let Ok(mut d) = DIR.lock() {
        *d = Some(dir.to_path_buf());
    }
}

fn spill_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ONNXQ_SPILL_DIR") {
        return PathBuf::from(d);
    }
    DIR.lock()
        .ok()
        .and_then(|d| d.clone())
        .unwrap_or_else(std::env::temp_dir)
}

/// The process's spill file: unlinked, so its blocks go back to the file system
/// when the process ends whatever happens; regions are freed as tensors drop.
struct SpillFile {
    file: File,
    /// The next free (page-aligned) offset.
    end: Mutex<u64>,
}

fn spill_file() -> Option<Arc<SpillFile>> {
    static FILE: OnceLock<Option<Arc<SpillFile>>> = OnceLock::new();
    FILE.get_or_init(|| {
        let file = tempfile::tempfile_in(spill_dir()).ok()?;
        Some(Arc::new(SpillFile {
            file,
            end: Mutex::new(0),
        }))
    })
    .clone()
}

/// Start → end addresses of the live spilled regions (for [`is_spilled`]).
static REGIONS: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

/// One tensor's bytes in the spill file, mapped read-only.
struct Region {
    map: memmap2::Mmap,
    spill: Arc<SpillFile>,
    offset: u64,
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Ok(mut r) = REGIONS.lock() {
            r.remove(&(self.map.as_ptr() as usize));
        }
        punch_hole(&self.spill.file, self.offset, self.map.len() as u64);
    }
}

/// Frees the file blocks of a region nobody maps any more.
fn punch_hole(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = len.div_ceil(PAGE) * PAGE;
        // SAFETY: plain syscall on an owned descriptor; failure only keeps the blocks.
        unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

impl SpillFile {
    fn store(self: &Arc<Self>, data: &[u8]) -> std::io::Result<Bytes> {
        let len = data.len() as u64;
        let offset = {
            let mut end = self
                .end
                .lock()
                .map_err(|_| std::io::Error::other("spill file lock poisoned"))?;
            let offset = *end;
            *end = (offset + len).div_ceil(PAGE) * PAGE;
            offset
        };
        let stored = write_at(&self.file, data, offset)
            .and_then(|()| {
                // SAFETY: the region was just written and is never written again
                // while mapped (offsets are handed out once); the file is private
                // to this process (unlinked).
                unsafe {
                    memmap2::MmapOptions::new()
                        .offset(offset)
                        .len(data.len())
                        .map(&self.file)
                }
            })
            .map(|map| Region {
                map,
                spill: self.clone(),
                offset,
            });
        let region = match stored {
            Ok(r) => r,
            Err(e) => {
                punch_hole(&self.file, offset, len);
                return Err(e);
            }
        };
        let start = region.map.as_ptr() as usize;
        if let Ok(mut r) = REGIONS.lock() {
            r.insert(start, start + region.map.len());
        }
        Ok(Bytes::from_owner(region))
    }
}

#[cfg(unix)]
fn write_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, data, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(not(any(unix, windows)))]
fn write_at(_: &File, _: &[u8], _: u64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// `data` as `Bytes`: spilled to the spill file when it is large enough (see the
/// module docs), else moved into memory as is.
pub fn bytes(data: Vec<u8>) -> Bytes {
    match min_bytes() {
        Some(min) if !data.is_empty() && data.len() >= min => {}
        _ => return Bytes::from(data),
    }
    match spill_file().map(|f| f.store(&data)) {
        Some(Ok(b)) => b,
        _ => Bytes::from(data),
    }
}

/// Whether `bytes` lies inside a spilled region (a file map whose resident pages
/// [`super::release_pages`] may drop).
pub fn is_spilled(bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let start = bytes.as_ptr() as usize;
    let end = start + bytes.len();
    REGIONS.lock().is_ok_and(|r| {
        r.range(..=start)
            .next_back()
            .is_some_and(|(_, &e)| end <= e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_bytes_read_back_identical_and_are_known() {
        let Some(f) = spill_file() else { return };
        let data: Vec<u8> = (0..3 * PAGE as usize + 123)
            .map(|i| (i * 7) as u8)
            .collect();
        let a = f.store(&data).unwrap();
        let b = f.store(&data[..10]).unwrap();
        assert_eq!(&a[..], &data[..]);
        assert_eq!(&b[..], &data[..10]);
        assert!(is_spilled(&a));
        assert!(is_spilled(&a[100..200]));
        assert!(!is_spilled(&data));
        // Page-aligned regions: the second starts on the page after the first ends.
        assert_eq!(a.as_ptr() as usize % PAGE as usize, 0);
        let a2 = a.slice(5..);
        super::super::release_pages(&a2);
        assert_eq!(&a2[..], &data[5..]);
        drop(a);
        // A slice keeps the region alive.
        assert!(is_spilled(&a2));
        drop(a2);
        assert!(!is_spilled(&b[..0]));
    }
}
