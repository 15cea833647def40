//! Registration, login, logout and the caller's profile.

use serde_json::{json, Value};

use super::{token_json, user_json, validated_but_missing, Params};
use crate::accounts::AuthUser;
use crate::domain::{parse_name, Email, Password, Username};
use crate::error::AppError;
use crate::http::request::{Fields, Incoming};
use crate::http::response::Reply;
use crate::service::{Registration, Service};

pub fn register(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let username = f.parsed("username", Username::parse);
    let email = f.parsed("email", Email::parse);
    let password = f.parsed("password", Password::parse);
    let confirm = f.string("password_confirm", true);
    let first_name = f.string("first_name", false).map(parse_name).transpose();
    let first_name = f.errors.check("first_name", first_name);
    let last_name = f.string("last_name", false).map(parse_name).transpose();
    let last_name = f.errors.check("last_name", last_name);
    if let (Some(p), Some(c)) = (f.raw("password").and_then(Value::as_str), confirm) {
        if p != c {
            f.errors.add("password_confirm", "does not match password");
        }
    }
    if let (Some(p), Some(u)) = (&password, &username) {
        if crate::domain::username_key(p.expose()) == u.key() {
            f.errors
                .add("password", "must not be the same as the username");
        }
    }
    f.finish()?;
    let (Some(username), Some(email), Some(password), Some(first), Some(last)) =
        (username, email, password, first_name, last_name)
    else {
        return Err(validated_but_missing());
    };
    let registration = Registration {
        username,
        email,
        password,
        first_name: first.unwrap_or_default(),
        last_name: last.unwrap_or_default(),
    };
    let (user, token) = svc.register(registration)?;
    let mut body = token_json(&user, &token);
    body.insert("message".into(), json!("registration successful"));
    Ok(Reply::json(201, Value::Object(body)))
}

pub fn login(svc: &Service, rq: &Incoming, _: &Params) -> Result<Reply, AppError> {
    let body = rq.json()?;
    let mut f = Fields::new(&body);
    let username = f.string("username", true);
    let password = f.string("password", true);
    f.finish()?;
    let (Some(username), Some(password)) = (username, password) else {
        return Err(validated_but_missing());
    };
    let (user, token) = svc.login(username, password, &rq.client)?;
    Ok(Reply::json(200, Value::Object(token_json(&user, &token))))
}

pub fn logout(svc: &Service, _: &Incoming, _: &Params, user: &AuthUser) -> Result<Reply, AppError> {
    svc.logout(user)?;
    Ok(Reply::json(
        200,
        json!({"detail": "logged out; this token no longer works"}),
    ))
}

pub fn profile(
    svc: &Service,
    _: &Incoming,
    _: &Params,
    user: &AuthUser,
) -> Result<Reply, AppError> {
    Ok(Reply::json(200, user_json(&svc.user(user.user_id)?)))
}
