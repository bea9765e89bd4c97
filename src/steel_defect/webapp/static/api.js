// Talking to the server: JSON requests, errors as exceptions, and the access-token login.
//
// A server started with a token answers 401 until the page logs in. We ask once, however many
// requests failed together; the session cookie the login sets then covers every request,
// the <img> ones included, and is never sent by another site's page (SameSite=Strict).

let loggingIn = null;

function logIn() {
  loggingIn = loggingIn || (async () => {
    let question = "This server needs an access token (ask whoever started it):";
    for (;;) {
      const token = window.prompt(question);
      if (token === null) throw new Error("no access token given; reload the page to enter it");
      const response = await fetch("/api/login", jsonBody({ token }));
      if (response.ok) return;
      question = "That token is wrong; try again:";
    }
  })().finally(() => { loggingIn = null; });
  return loggingIn;
}

// fetch, logging in once on 401 and repeating the request.
export async function send(path, options = {}) {
  const response = await fetch(path, options);
  if (response.status !== 401) return response;
  await logIn();
  return fetch(path, options);
}

// An answer that is not 2xx, with its status and its JSON body (FastAPI's {"detail": ...}).
export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export async function api(path, options = {}) {
  const response = await send(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let body = null;
    try {
      body = await response.json();
      message = body.detail || message;
    } catch (_) { /* not JSON */ }
    throw new ApiError(message, response.status, body);
  }
  return response;
}

export function jsonBody(body, method = "POST") {
  return { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}
