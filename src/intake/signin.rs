//! One sign-in, from auth code to stored user: exchange the code at Google's token endpoint,
//! verify the ID token, check the granted scopes, then store profile and sealed tokens in one
//! transaction. Nothing is written unless every check passed.

use std::sync::Arc;

use secrecy::SecretString;

use crate::crypto::{Keyring, Purpose};
use crate::google::id_token::unverified_sub;
use crate::google::id_token::{IdClaims, IdTokenError, IdTokenVerifier};
use crate::google::oauth::{OAuthClient, TokenResponse};
use crate::google::GoogleError;
use crate::store::changes::{self, ChangeKind, NewChange};
use crate::store::users::{Profile, UserState};
use crate::store::{self, credentials, users, Store};

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error(transparent)]
    Google(#[from] GoogleError),
    #[error("Google returned no ID token: the app must request the openid/email scopes")]
    NoIdToken,
    #[error(transparent)]
    IdToken(#[from] IdTokenError),
    #[error("missing scopes: {}", .0.join(" "))]
    MissingScopes(Vec<String>),
    #[error("no refresh token for this user")]
    NoRefreshToken,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct SignedIn {
    pub sub: String,
    pub email: Option<String>,
    pub state: UserState,
    pub new_refresh_token: bool,
}

pub struct SignIn {
    pub oauth: OAuthClient,
    pub verifier: Arc<IdTokenVerifier>,
    pub store: Store,
    pub keyring: Keyring,
    pub required_scopes: Vec<String>,
}

impl SignIn {
    pub async fn sign_in(&self, code: &SecretString) -> Result<SignedIn, SignInError> {
        let tokens = self.oauth.exchange_code(code).await?;
        let result = self.store_verified(&tokens).await;
        if let Err(e) = &result {
            // Google issued tokens for this user, so say whose sign-in failed (as the ID token
            // names them, verified or not): an operator can follow that user from here.
            let named = tokens.id_token.as_deref().and_then(unverified_sub);
            tracing::info!(
                user = ?named,
                new_refresh_token = tokens.refresh_token.is_some(),
                error = %e,
                "sign-in failed after the code exchange"
            );
            if let Some(refresh) = &tokens.refresh_token {
                self.give_back(e, refresh, named).await;
            }
        }
        result
    }

    /// A sign-in that fails after Google issued a refresh token would strand it: Google sends
    /// one only on first consent, so the app's retry would get none and be refused (409).
    /// Revoking it makes the retry a first consent again. Not when we hold a credential for
    /// the user (or cannot tell whose it is): the grant is shared, and revoking it would kill
    /// the refresh token we sync with.
    async fn give_back(&self, why: &SignInError, refresh: &SecretString, named: Option<String>) {
        let Some(sub) = named else {
            return;
        };
        // When the database cannot tell (it is why the sign-in failed, often), revoke anyway: a
        // stranded token locks a new user out until they remove access by hand, while an
        // existing user whose grant this kills is signing in again right now.
        let held = match self.store.pool().acquire().await {
            Ok(mut conn) => credentials::exists(&mut conn, &sub).await.unwrap_or(false),
            Err(_) => false,
        };
        if held {
            return;
        }
        match self.oauth.revoke(refresh).await {
            Ok(()) => tracing::info!(
                error = %why,
                "sign-in failed after Google issued a refresh token; revoked it so that a retry gets a new one"
            ),
            Err(e) => tracing::warn!(
                error = %why,
                revoke_error = %e,
                "sign-in failed after Google issued a refresh token, and revoking it failed; \
                 the user may have to remove the app's access in their Google account"
            ),
        }
    }

    async fn store_verified(&self, tokens: &TokenResponse) -> Result<SignedIn, SignInError> {
        let id_token = tokens.id_token.as_deref().ok_or(SignInError::NoIdToken)?;
        let claims = self.verifier.verify(id_token).await?;

        let granted = self.check_scopes(tokens)?;
        let sub = claims.sub.clone();
        let obtained_at = store::now_ms();
        let access_expires_at = tokens.expires_at_ms(obtained_at);
        let access = self
            .keyring
            .seal(&sub, Purpose::AccessToken, &tokens.access_token);

        let mut tx = self.store.begin_write().await?;
        let existing = users::get(tx.conn(), &sub).await?;
        let has_credential = credentials::exists(tx.conn(), &sub).await?;
        let mut state = existing.as_ref().map_or(UserState::Active, |u| u.state);
        match &tokens.refresh_token {
            Some(refresh) => {
                users::upsert_profile(tx.conn(), &profile(&claims), obtained_at).await?;
                let sealed = self.keyring.seal(&sub, Purpose::RefreshToken, refresh);
                credentials::put_refresh_token(
                    tx.conn(),
                    &sub,
                    &sealed,
                    &granted.join(" "),
                    obtained_at,
                    Some((&access, access_expires_at)),
                )
                .await?;
                // What Cross-Account Protection's token-revoked events name the token by.
                crate::tokens::store_token_ids(tx.conn(), &sub, &sealed, refresh).await?;
                // A fresh grant heals a revoked one; an admin's pause stays.
                if matches!(state, UserState::ReauthRequired | UserState::Forgotten) {
                    users::set_state(tx.conn(), &sub, UserState::Active, None, obtained_at).await?;
                    state = UserState::Active;
                }
            }
            // Google sends a refresh token only on first consent: keep the one we have. A user
            // whose stored token was refused needs a new one, so that is the same as none.
            None if has_credential && state != UserState::ReauthRequired => {
                users::upsert_profile(tx.conn(), &profile(&claims), obtained_at).await?;
                credentials::put_access_token(
                    tx.conn(),
                    &sub,
                    &access,
                    access_expires_at,
                    Some(&granted.join(" ")),
                )
                .await?;
            }
            None => return Err(SignInError::NoRefreshToken),
        }
        let change = NewChange::user(ChangeKind::UserSignedIn, &sub, state.as_str());
        changes::record(tx.conn(), &change, obtained_at).await?;
        tx.commit().await?;
        Ok(SignedIn {
            sub,
            email: claims.email,
            state,
            new_refresh_token: tokens.refresh_token.is_some(),
        })
    }
}

impl SignIn {
    /// The scopes Google granted, when they include every required one.
    fn check_scopes<'t>(&self, tokens: &'t TokenResponse) -> Result<Vec<&'t str>, SignInError> {
        let granted = tokens.scopes();
        let missing: Vec<String> = self
            .required_scopes
            .iter()
            .filter(|s| !granted.contains(&s.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(granted)
        } else {
            Err(SignInError::MissingScopes(missing))
        }
    }
}

fn profile(c: &IdClaims) -> Profile {
    Profile {
        sub: c.sub.clone(),
        email: c.email.clone(),
        email_verified: c.email_verified,
        name: c.name.clone(),
        given_name: c.given_name.clone(),
        family_name: c.family_name.clone(),
        picture: c.picture.clone(),
        locale: c.locale.clone(),
    }
}
