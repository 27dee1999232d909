//! Graceful shutdown, broadcast once to every task (the mini-redis pattern): the owner
//! keeps a [`Trigger`], every task a cheap [`Shutdown`] it can wait on in a `select!`.

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
pub struct Trigger(watch::Sender<bool>);

/// Tells a task that shutdown has begun.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A trigger and the first of its listeners.
pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (Trigger(sender), Shutdown(receiver))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    pub fn listener(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which only happens once its owner is gone:
        // that is a shutdown too.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    pub fn has_begun(&self) -> bool {
        *self.0.borrow()
    }
}
