//! External data files: path containment, one read-only map per file, bounds checks.
use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::ir::ExternalRef;

/// Maps each external data file at most once and hands out slices of it.
pub struct ExternalFiles {
    dir: PathBuf,
    maps: HashMap<String, Bytes>,
}

impl ExternalFiles {
    pub fn new(model_dir: &Path) -> Self {
        ExternalFiles {
            dir: model_dir.to_path_buf(),
            maps: HashMap::new(),
        }
    }

    /// Parses `external_data` entries of tensor `tensor`.
    pub fn parse_ref(tensor: &str, entries: Vec<(String, String)>) -> Result<ExternalRef> {
        let bad = |location: &str, reason: String| Error::ExternalData {
            tensor: tensor.to_string(),
            location: location.to_string(),
            reason,
        };
        let get = |key: &str| {
            entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let location = get("location").ok_or_else(|| bad("?", "no 'location' entry".into()))?;
        let parse = |key: &str| -> Result<Option<u64>> {
            get(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| bad(&location, format!("'{key}' is not a byte count: {v:?}")))
                })
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?;
        Ok(ExternalRef {
            location,
            offset,
            length,
            entries,
        })
    }

    /// The bytes `r` points at, checked to lie inside a file under the model's folder.
    pub fn slice(&mut self, tensor: &str, r: &ExternalRef) -> Result<Bytes> {
        let bad = |reason: String| Error::ExternalData {
            tensor: tensor.to_string(),
            location: r.location.clone(),
            reason,
        };
        let file = match self.maps.get(&r.location) {
            Some(b) => b.clone(),
            None => {
                let path = contained_path(&self.dir, &r.location).map_err(&bad)?;
                let f = File::open(&path)
                    .map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
                let len = f.metadata().map_err(|e| bad(e.to_string()))?.len();
                let bytes = if len == 0 {
                    Bytes::new()
                } else {
                    // Safety: the map is read-only; onnxq never writes a file it has mapped
                    // (saves go to a temp file and are renamed into place).
                    let map = unsafe { memmap2::Mmap::map(&f) }
                        .map_err(|e| bad(format!("cannot map: {e}")))?;
                    Bytes::from_owner(map)
                };
                self.maps.insert(r.location.clone(), bytes.clone());
                bytes
            }
        };
        let size = file.len() as u64;
        if r.offset > size {
            return Err(bad(format!(
                "offset {} is past the end of the file ({size} bytes)",
                r.offset
            )));
        }
        let length = r.length.unwrap_or(size - r.offset);
        let end = r
            .offset
            .checked_add(length)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                bad(format!(
                    "offset {} + length {length} is past the end of the file ({size} bytes)",
                    r.offset
                ))
            })?;
        Ok(file.slice(r.offset as usize..end as usize))
    }
}

/// `location` resolved under `dir`, refusing absolute paths and `..` escapes.
pub fn contained_path(dir: &Path, location: &str) -> std::result::Result<PathBuf, String> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err("empty location".into());
    }
    let mut depth = 0i32;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err("location escapes the model's folder".into());
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("location must be relative to the model's folder".into())
            }
        }
    }
    let path = dir.join(rel);
    // Symlinks may still point outside; resolve and compare when the file exists.
    if let (Ok(real), Ok(base)) = (path.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&base) {
            return Err("location resolves outside the model's folder".into());
        }
    }
    Ok(path)
}
