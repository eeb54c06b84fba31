//! Text to token ids with a Hugging Face `tokenizer.json`, read by the `tokenizers`
//! crate: every model kind (BPE, byte-level or with byte fallback, Unigram, WordPiece,
//! WordLevel), normalizers, pre-tokenizers, added tokens and post-processors exactly as
//! the Python `transformers` tokenizers apply them. This wrapper only pins what onnxq
//! needs: whole texts (no truncation or padding) and errors that name the file.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut inner: tokenizers::Tokenizer = text.parse().map_err(|e| {
            Error::invalid(format!(
                "tokenizer {}: not a tokenizer.json the tokenizers library reads: {e}",
                path.display()
            ))
        })?;
        // A file saved for a fine-tuning run may truncate (or pad) to a fixed length;
        // calibration and perplexity need every token of the text.
        inner.with_truncation(None).map_err(|e| {
            Error::invalid(format!(
                "tokenizer {}: cannot turn truncation off: {e}",
                path.display()
            ))
        })?;
        inner.with_padding(None);
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Token ids of `text`, with the special tokens the post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::invalid(format!("tokenizer {}: {e}", self.path.display())))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] as a model's int64 `input_ids` take them.
    pub fn input_ids(&self, text: &str) -> Result<Vec<i64>> {
        Ok(self.encode(text)?.into_iter().map(i64::from).collect())
    }

    /// The id of `token` (a vocabulary entry or added token), if the tokenizer has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text behind `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::invalid(format!("tokenizer {}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        std::fs::write(&path, r#"{"model": {"type": "Nonsense"}}"#).unwrap();
        let err = Tokenizer::from_file(&path).err().unwrap().to_string();
        assert!(err.contains("broken.json"), "{err}");
        let missing = dir.path().join("missing.json");
        let err = Tokenizer::from_file(&missing).err().unwrap().to_string();
        assert!(err.contains("missing.json"), "{err}");
    }

    #[test]
    fn truncation_in_the_file_is_ignored() {
        let mut v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer.json"),
            )
            .unwrap(),
        )
        .unwrap();
        v["truncation"] = serde_json::json!({
            "direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let ids = Tokenizer::from_file(&path)
            .unwrap()
            .encode("a text much longer than four tokens")
            .unwrap();
        assert!(ids.len() > 4, "{ids:?}");
    }
}
