//! Dead-code removal as a pass.
use serde::Deserialize;

use crate::error::Result;
use crate::ir::Model;
use crate::rewrite::{Pass, PassCx, PassOutcome};

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeadConfig {}

/// Removes nodes and initializers that no graph output depends on (every graph,
/// subgraphs included).
pub struct RemoveDead;

impl Pass for RemoveDead {
    fn name(&self) -> &'static str {
        "remove-dead"
    }

    fn run(&self, model: &mut Model, _cx: &mut PassCx) -> Result<PassOutcome> {
        let mut outcome = PassOutcome::new(self.name());
        let (mut nodes, mut inits) = (0, 0);
        model.for_each_graph_mut(&mut |g| {
            let (n, i) = g.remove_dead();
            nodes += n;
            inits += i;
        });
        outcome.count("nodes removed", nodes as u64);
        outcome.count("initializers removed", inits as u64);
        outcome.changed = nodes + inits > 0;
        Ok(outcome)
    }
}
