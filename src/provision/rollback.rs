//! A rollback guard: each provisioning step registers its undo right after it succeeds, and
//! the undos run, last first, unless the whole succeeded ([`Rollback::commit`]). So every exit
//! of a set-up undoes exactly what was made, and the undo of a step sits next to the step.

/// One undo, named for traces.
type Undo<'a> = (&'static str, Box<dyn FnOnce() + 'a>);

/// Undo steps, run in reverse order when dropped uncommitted.
#[derive(Default)]
pub struct Rollback<'a> {
    steps: Vec<Undo<'a>>,
}

impl<'a> Rollback<'a> {
    pub fn new() -> Rollback<'a> {
        Rollback::default()
    }

    /// Registers the undo of a step that just succeeded; `what` names it in traces.
    pub fn push(&mut self, what: &'static str, undo: impl FnOnce() + 'a) {
        self.steps.push((what, Box::new(undo)));
    }

    /// Everything succeeded: nothing is undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        while let Some((what, undo)) = self.steps.pop() {
            tracing::debug!("rollback: {what}");
            undo();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn undos_run_last_first_unless_committed() {
        let log = RefCell::new(Vec::new());
        {
            let mut r = Rollback::new();
            r.push("a", || log.borrow_mut().push("a"));
            r.push("b", || log.borrow_mut().push("b"));
        }
        assert_eq!(*log.borrow(), vec!["b", "a"]);
        let mut r = Rollback::new();
        r.push("c", || log.borrow_mut().push("c"));
        r.commit();
        assert_eq!(*log.borrow(), vec!["b", "a"]);
    }
}
