//! The evaluation report as a table for people.
use std::fmt::Write;

use super::EvalReport;

pub fn table(r: &EvalReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} on {}: {} tokens scored of {} ({} window(s) of {}, stride {})",
        r.model.display(),
        r.runtime,
        r.tokens,
        r.text_tokens,
        r.windows,
        r.window,
        r.stride
    );
    let _ = writeln!(
        s,
        "  {:<28} {:>12}",
        "perplexity",
        format!("{:.4}", r.perplexity)
    );
    let _ = writeln!(
        s,
        "  {:<28} {:>12}",
        "nll / token",
        format!("{:.6}", r.nll_mean)
    );
    if let Some(c) = &r.reference {
        let change = (r.perplexity / c.reference_perplexity - 1.0) * 100.0;
        let _ = writeln!(s, "reference {}", c.reference.display());
        let rows = [
            ("perplexity", format!("{:.4}", c.reference_perplexity)),
            ("perplexity change", format!("{change:+.2}%")),
            ("KL mean (nats)", format!("{:.3e}", c.kl_mean)),
            ("KL p99", format!("{:.3e}", c.kl_p99)),
            ("KL max", format!("{:.3e}", c.kl_max)),
            (
                "top-1 agreement",
                format!("{:.2}%", c.top1_agreement * 100.0),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(s, "  {k:<28} {v:>12}");
        }
        let g = &c.greedy;
        let _ = writeln!(
            s,
            "  {:<28} {:>12}  ({} prompts of {} tokens, {} generated each, {}; {} identical)",
            "greedy agreement",
            format!("{:.2}%", g.agreement * 100.0),
            g.prompts,
            g.prompt_tokens,
            g.generated_tokens,
            if g.kv_cache { "KV cache" } else { "recomputed" },
            g.identical
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
