//! Appending to Redis streams: how pods hand client pushes to backends,
//! which read them with consumer groups (`XREADGROUP`) at their own pace.

use crate::{Error, RedisBus};

impl RedisBus {
    /// Appends one entry to the stream `{prefix}{name}`, trimmed to about
    /// `max_len` entries (`MAXLEN ~`: whole nodes are trimmed, which costs
    /// Redis nothing per entry), and returns its id.
    ///
    /// # Errors
    /// When Redis is unreachable or refuses the command (a key of another
    /// type, say).
    pub async fn append(
        &self,
        name: &str,
        max_len: usize,
        fields: &[(&str, &[u8])],
    ) -> Result<String, Error> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.channel(name))
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*");
        for (field, value) in fields {
            cmd.arg(*field).arg(*value);
        }
        self.query(&cmd).await
    }
}
