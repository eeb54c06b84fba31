//! Promotion for the accuracy tuning loop: which weights move to a more precise
//! setting next, given each weight's options as (bytes, predicted error) and the
//! setting it has now.
//!
//! Contracts:
//! - [`next_step`] moves one weight to the option that removes the most predicted
//!   error per byte added (an option with lower error and no more bytes first), or
//!   to none when no option has a lower error (or none fits the bytes left).
//! - [`promote`] takes such steps, steepest first, until at least `min_steps` are
//!   taken and the total predicted error is at most `target`, or no step is left;
//!   with a budget, no step takes the total bytes over it.
use super::mixed::Candidate;

/// One promotion: `layer` moves from option `from` to option `to`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub layer: usize,
    pub from: usize,
    pub to: usize,
    /// Predicted error removed.
    pub gain: f64,
    /// Bytes added (negative when the new option is smaller).
    pub bytes: i64,
}

/// The option `opts[current]` is promoted to, if any: lower error, the most error
/// removed per byte added, at most `room` more bytes. Options that cost no more
/// bytes come first (the lowest error among them); ties go to the lower index.
pub fn next_step(opts: &[Candidate], current: usize, room: Option<u64>) -> Option<usize> {
    let cur = opts.get(current)?;
    let mut best: Option<(f64, f64, usize)> = None;
    for (j, o) in opts.iter().enumerate() {
        if o.error >= cur.error || o.error.is_nan() {
            continue;
        }
        let extra = o.bytes.saturating_sub(cur.bytes);
        if room.is_some_and(|r| extra > r) {
            continue;
        }
        let gain = cur.error - o.error;
        let slope = if extra == 0 {
            f64::INFINITY
        } else {
            gain / extra as f64
        };
        let better = match best {
            None => true,
            Some((s, g, _)) => slope > s || (slope == s && gain > g),
        };
        if better {
            best = Some((slope, gain, j));
        }
    }
    best.map(|(_, _, j)| j)
}

/// Promotes `choice` in place (see the module contracts); returns the steps taken,
/// in order. `budget` bounds Σ bytes of the chosen options.
pub fn promote(
    layers: &[Vec<Candidate>],
    choice: &mut [usize],
    min_steps: usize,
    target: f64,
    budget: Option<u64>,
) -> Vec<Step> {
    let mut spent: u64 = choice
        .iter()
        .zip(layers)
        .map(|(&c, opts)| opts[c].bytes)
        .sum();
    let mut total: f64 = choice
        .iter()
        .zip(layers)
        .map(|(&c, opts)| opts[c].error)
        .sum();
    let mut steps = Vec::new();
    loop {
        if steps.len() >= min_steps && total <= target {
            break;
        }
        let mut best: Option<(f64, f64, usize, usize)> = None;
        for (i, opts) in layers.iter().enumerate() {
            let c = choice[i];
            // Bytes left over: a smaller option frees some.
            let room = budget.map(|b| b.saturating_sub(spent));
            let Some(j) = next_step(opts, c, room) else {
                continue;
            };
            let gain = opts[c].error - opts[j].error;
            let extra = opts[j].bytes.saturating_sub(opts[c].bytes);
            let slope = if extra == 0 {
                f64::INFINITY
            } else {
                gain / extra as f64
            };
            let better = match best {
                None => true,
                Some((s, g, _, _)) => slope > s || (slope == s && gain > g),
            };
            if better {
                best = Some((slope, gain, i, j));
            }
        }
        let Some((_, gain, i, j)) = best else { break };
        let from = choice[i];
        let (a, b) = (layers[i][from].bytes, layers[i][j].bytes);
        spent = spent - a + b;
        total -= gain;
        choice[i] = j;
        steps.push(Step {
            layer: i,
            from,
            to: j,
            gain,
            bytes: b as i64 - a as i64,
        });
    }
    steps
}

/// Whether some layer still has an option with a lower predicted error, bytes
/// aside (to tell a budget that blocks promotion from a plan at its most precise).
pub fn any_step_left(layers: &[Vec<Candidate>], choice: &[usize]) -> bool {
    layers
        .iter()
        .zip(choice)
        .any(|(opts, &c)| next_step(opts, c, None).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(bytes: u64, error: f64) -> Candidate {
        Candidate { bytes, error }
    }

    #[test]
    fn the_steepest_step_goes_first() {
        // Layer 0 gains 4 per 10 bytes, layer 1 gains 9 per 10 bytes.
        let layers = vec![
            vec![o(10, 5.0), o(20, 1.0), o(40, 0.0)],
            vec![o(10, 10.0), o(20, 1.0), o(40, 0.0)],
        ];
        let mut choice = vec![0, 0];
        let steps = promote(&layers, &mut choice, 1, f64::INFINITY, None);
        assert_eq!(steps.len(), 1);
        assert_eq!((steps[0].layer, steps[0].from, steps[0].to), (1, 0, 1));
        assert_eq!(choice, [0, 1]);
    }

    #[test]
    fn steps_continue_until_the_target_and_stop_at_the_most_precise() {
        let layers = vec![
            vec![o(10, 5.0), o(20, 1.0), o(40, 0.0)],
            vec![o(10, 10.0), o(20, 1.0), o(40, 0.0)],
        ];
        let mut choice = vec![0, 0];
        let steps = promote(&layers, &mut choice, 1, 2.5, None);
        // 15 → 6 (layer 1) → 2 (layer 0): two steps reach 2.5.
        assert_eq!(steps.len(), 2);
        assert_eq!(choice, [1, 1]);
        let steps = promote(&layers, &mut choice, 0, 0.0, None);
        assert_eq!(choice, [2, 2], "{steps:?}");
        assert!(promote(&layers, &mut choice, 1, 0.0, None).is_empty());
        assert!(!any_step_left(&layers, &choice));
    }

    #[test]
    fn a_budget_is_never_exceeded() {
        let layers = vec![
            vec![o(10, 5.0), o(12, 4.0), o(40, 0.0)],
            vec![o(10, 10.0), o(30, 1.0)],
        ];
        let mut choice = vec![0, 0];
        // 20 bytes spent, 5 left: only layer 0's small step fits.
        let steps = promote(&layers, &mut choice, 1, 0.0, Some(25));
        assert_eq!(choice, [1, 0], "{steps:?}");
        let spent: u64 = choice.iter().zip(&layers).map(|(&c, l)| l[c].bytes).sum();
        assert!(spent <= 25);
        assert!(any_step_left(&layers, &choice));
    }

    #[test]
    fn a_free_improvement_comes_first() {
        let opts = vec![o(20, 5.0), o(18, 4.0), o(21, 0.1)];
        assert_eq!(next_step(&opts, 0, None), Some(1));
        assert_eq!(next_step(&opts, 2, None), None);
    }
}
