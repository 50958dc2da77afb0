//! `otpctl group refresh`: the members of `[daemon] require_group` read
//! through NSS now and stored.
use crate::admin::ops::shared::err;
use crate::core::service::Core;
use common::proto::{AdminErrorKind, AdminResponse};

pub async fn refresh(core: &Core) -> AdminResponse {
    match crate::core::groups::refresh(core).await {
        Ok(Some((group, n))) => AdminResponse::Done { message: format!("require_group {group}: {n} member(s) stored") },
        Ok(None) => err(AdminErrorKind::InvalidInput, "no require_group is set in [daemon]: nothing to refresh"),
        Err(e) => err(AdminErrorKind::Internal, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use std::sync::Arc;

    fn with_group(group: Option<&str>) -> Core {
        let mut parts = parts();
        Arc::get_mut(&mut parts.policy).unwrap().require_group = group.map(String::from);
        Core::new(parts)
    }

    #[tokio::test]
    async fn without_require_group_there_is_nothing_to_refresh() {
        let core = with_group(None);
        let (kind, message) = refusal(refresh(&core).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert_eq!(message, "no require_group is set in [daemon]: nothing to refresh");
    }

    #[tokio::test]
    async fn the_members_of_the_group_are_stored() {
        // The root group exists on every Linux system, root's primary group.
        let core = with_group(Some("root"));
        let message = done(refresh(&core).await);
        let n = crate::core::groups::members("root").unwrap().unwrap().len();
        assert_eq!(message, format!("require_group root: {n} member(s) stored"));
        assert!(n >= 1);
        assert!(on_db(&core, |st| st.in_group("root", "root")).await);
        assert!(!on_db(&core, |st| st.in_group("root", "ut-nobody")).await);
    }

    #[tokio::test]
    async fn a_group_that_does_not_exist_is_stored_empty() {
        let core = with_group(Some("ut-no-such-group"));
        let names = vec!["ut-ada".to_string()];
        on_db(&core, move |st| st.set_group_members("ut-no-such-group", &names)).await;
        let message = done(refresh(&core).await);
        assert_eq!(message, "require_group ut-no-such-group: 0 member(s) stored");
        assert!(!on_db(&core, |st| st.in_group("ut-no-such-group", "ut-ada")).await);
    }
}
