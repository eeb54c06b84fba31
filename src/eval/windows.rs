//! Which tokens each forward pass scores: Hugging Face's strided perplexity. Windows
//! of `window` tokens start every `stride` tokens; each scores only the tokens the
//! previous window did not, so every token after the first is scored exactly once,
//! with up to `window - stride` tokens of context carried over.
use crate::error::{Error, Result};

/// One forward pass: tokens `start..end` go in, tokens `score_from..end` are scored
/// (each predicted by the logits of the token before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub score_from: usize,
}

impl Window {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn scored(&self) -> usize {
        self.end - self.score_from
    }
}

/// Refuses a window too short to predict anything and a stride that would leave
/// tokens unscored.
pub fn check(window: usize, stride: usize) -> Result<()> {
    if window < 2 {
        return Err(Error::invalid(format!(
            "--window {window}: a window needs at least 2 tokens (one to predict from)"
        )));
    }
    if stride == 0 || stride > window {
        return Err(Error::invalid(format!(
            "--stride {stride}: must be between 1 and the window ({window}); a larger \
             stride would leave tokens unscored"
        )));
    }
    Ok(())
}

/// The windows over `tokens` tokens.
pub fn plan(tokens: usize, window: usize, stride: usize) -> Result<Vec<Window>> {
    check(window, stride)?;
    if tokens < 2 {
        return Err(Error::invalid(format!(
            "the text has {tokens} token(s): perplexity needs at least 2"
        )));
    }
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut start = 0;
    while start < tokens {
        let end = (start + window).min(tokens);
        // The first token of the text has nothing to be predicted from.
        let score_from = prev_end.max(start + 1);
        if score_from < end {
            out.push(Window {
                start,
                end,
                score_from,
            });
        }
        prev_end = end;
        if end == tokens {
            break;
        }
        start += stride;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_window_scores_all_but_the_first_token() {
        let w = plan(8, 8, 8).unwrap();
        assert_eq!(
            w,
            [Window {
                start: 0,
                end: 8,
                score_from: 1
            }]
        );
    }

    #[test]
    fn strided_windows_score_every_token_once() {
        let w = plan(10, 4, 2).unwrap();
        let mut seen = vec![0; 10];
        for x in &w {
            assert!(x.len() <= 4 && x.score_from > x.start);
            for c in &mut seen[x.score_from..x.end] {
                *c += 1;
            }
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1..].iter().all(|&c| c == 1), "{seen:?}");
        // The second window keeps two tokens of context.
        assert_eq!(
            w[1],
            Window {
                start: 2,
                end: 6,
                score_from: 4
            }
        );
        assert_eq!(w.last().unwrap().end, 10);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(plan(10, 4, 5).is_err());
        assert!(plan(10, 1, 1).is_err());
        assert!(plan(1, 4, 4).is_err());
    }
}
