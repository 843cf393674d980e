//! The dashboard's etcd discovery page: each token with its URL, size and registrations (in the
//! order they came, so the first `size` are the cluster), and forms to delete a stale
//! registration or a whole token. Every value a client registered goes through `escape`: anyone
//! holding a token's URL writes them.

use std::fmt::Write as _;

use crate::clock::Timestamp;
use crate::discovery::TokenView;

use super::render::layout;
use super::text::{datetime, escape};
use super::Session;

/// The page's path.
pub use super::render::DISCOVERY_PAGE as PAGE;

/// Where the form deleting a token posts.
pub fn token_delete_href(token: &str) -> String {
    format!("{PAGE}/{token}/delete")
}

/// Where the form deleting one registration posts.
pub fn member_delete_href(token: &str, id: &str) -> String {
    format!("{PAGE}/{token}/members/{id}/delete")
}

/// `/dashboard/discovery`.
pub fn page(tokens: &[TokenView], now: Timestamp, session: &Session) -> String {
    let mut body = String::from(
        "<h1>etcd discovery</h1>\n<p>Machines given a token's URL (<code>etcd2: discovery: \
         &lt;url&gt;</code>) bootstrap etcd together: the first <em>size</em> to register form \
         the cluster, later ones are told it is full. Create a token with \
         <code>kiln-server discovery new --size N</code>.</p>\n",
    );
    if tokens.is_empty() {
        body.push_str("<p>No token yet.</p>\n");
    }
    for token in tokens {
        body.push_str(&token_section(token, now, &session.csrf));
    }
    layout("etcd discovery", Some(session), &body)
}

fn token_section(token: &TokenView, now: Timestamp, csrf: &str) -> String {
    let registered = token.registrations.len();
    let size = token.size as usize;
    let state = match registered {
        n if n < size => format!("waiting for {} more", size - n),
        n if n == size => "complete".to_owned(),
        n => format!("complete; {} more were told it is full", n - size),
    };
    let mut out = format!(
        "<section class=\"token\" data-token=\"{t}\">\n<h2>{t}</h2>\n\
         <p class=\"id\">{url}</p>\n<p>size {size} · {registered} registered · {state} · \
         created {created} UTC ({age})</p>\n",
        t = escape(&token.token),
        url = escape(&token.url),
        state = escape(&state),
        created = datetime(token.created_at),
        age = super::render::ago(now, token.created_at),
    );
    if token.registrations.is_empty() {
        out.push_str("<p>No member has registered yet.</p>\n");
    } else {
        out.push_str(
            "<table class=\"registrations\">\n<thead><tr><th>#</th><th>member id</th>\
             <th>name=peer URLs</th><th>registered (UTC)</th><th>index</th><th>action</th>\
             </tr></thead>\n<tbody>\n",
        );
        for (n, registration) in token.registrations.iter().enumerate() {
            let _ = writeln!(
                out,
                "<tr data-member=\"{id}\"><td>{}</td><td class=\"member\">{id}</td>\
                 <td class=\"peers\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                n + 1,
                escape(&registration.value),
                datetime(registration.created_at),
                registration.index,
                delete_form(
                    &member_delete_href(&token.token, &registration.id),
                    "Delete registration",
                    csrf
                ),
                id = escape(&registration.id),
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str(&delete_form(
        &token_delete_href(&token.token),
        "Delete token",
        csrf,
    ));
    out.push_str("\n</section>\n");
    out
}

fn delete_form(action: &str, label: &str, csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>{}</button></form>",
        escape(action),
        escape(csrf),
        escape(label)
    )
}
