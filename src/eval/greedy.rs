//! Greedy generation: the most likely token, appended, again. With a KV cache each
//! step feeds one token and the cache; without one the whole sequence is recomputed.
use super::decoder::Decoder;
use super::stats::argmax;
use crate::error::Result;

/// `steps` tokens generated greedily after `prompt`.
pub fn generate(
    dec: &mut Decoder,
    prompt: &[i64],
    steps: usize,
    use_cache: bool,
) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(steps);
    if steps == 0 {
        return Ok(out);
    }
    let cached = use_cache && dec.names.has_cache();
    let (logits, mut cache) = dec.forward(prompt, None)?;
    let mut next = argmax(logits.row(logits.rows() - 1)) as i64;
    out.push(next);
    let mut seq = prompt.to_vec();
    while out.len() < steps {
        seq.push(next);
        let logits = if cached {
            let (l, c) = dec.forward(&[next], cache.as_ref())?;
            cache = c;
            l
        } else {
            dec.forward(&seq, None)?.0
        };
        next = argmax(logits.row(logits.rows() - 1)) as i64;
        out.push(next);
    }
    Ok(out)
}

/// Tokens two generations share before they first differ.
pub fn common_prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
