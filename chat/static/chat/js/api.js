// The JSON API over fetch, with the session cookie and Django's CSRF header.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || `request failed (${status})`);
    this.status = status;
    this.code = code || "network";
    this.detail = this.message;
  }
}

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (match) return decodeURIComponent(match[1]);
  // An HttpOnly cookie cannot be read: every page has the token in its log-out form.
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : "";
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "the server could not be reached");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && data.detail ? data.detail : `${method} ${path} failed (${response.status})`;
    throw new ApiError(response.status, data && data.code, detail);
  }
  return data;
}

export const rooms = {
  list: () => api("GET", "/api/rooms"),
  create: (fields) => api("POST", "/api/rooms", fields),
  join: (slug) => api("POST", `/api/rooms/${encodeURIComponent(slug)}/join`),
  // {before, limit}: a page of older messages; without `before`, the newest.
  messages: (slug, params = {}) => {
    const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined)).toString();
    const tail = query ? `?${query}` : "";
    return api("GET", `/api/rooms/${encodeURIComponent(slug)}/messages${tail}`);
  },
  // {q, before}: a page of search results, newest first (docs/protocol.md "Search").
  search: (slug, params) => {
    const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined)).toString();
    return api("GET", `/api/rooms/${encodeURIComponent(slug)}/search?${query}`);
  },
  read: (slug, seq) => api("POST", `/api/rooms/${encodeURIComponent(slug)}/read`, { seq }),
  send: (slug, fields) => api("POST", `/api/rooms/${encodeURIComponent(slug)}/messages`, fields),
  leave: (slug) => api("POST", `/api/rooms/${encodeURIComponent(slug)}/leave`),
  removeMember: (slug, username) =>
    api("DELETE", `/api/rooms/${encodeURIComponent(slug)}/members/${encodeURIComponent(username)}`),
};

export const messages = {
  control: (id, action) => api("POST", `/api/messages/${encodeURIComponent(id)}/${action}`),
  regenerate: (id) => api("POST", `/api/messages/${encodeURIComponent(id)}/regenerate`),
  pick: (id) => api("POST", `/api/messages/${encodeURIComponent(id)}/pick`),
  edit: (id, text) => api("PATCH", `/api/messages/${encodeURIComponent(id)}`, { text, rerun: false }),
  remove: (id) => api("DELETE", `/api/messages/${encodeURIComponent(id)}`),
  rate: (id, value, comment) => api("PUT", `/api/messages/${encodeURIComponent(id)}/rating`, { value, comment }),
};
