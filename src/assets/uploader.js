// upgate's browser uploader: background uploads with progress through an upload handle.
// Served by upgate at /_upgate/uploader.js. Usage:
//   import { register, upload, list, remove } from '/_upgate/uploader.js';
//   const handle = await register('/path/that/answers/with/X-Upgate-Register');
//   const answer = await upload(handle, input.files, (done) => bar.value = done);
//   const files = await list(handle);

const route = '/uploads';

/** Calls an application URL whose response registers a session; returns the handle upgate issued. */
export async function register(url, init = {}) {
  const res = await fetch(url, { credentials: 'same-origin', ...init });
  const handle = res.headers.get('X-Upload-Handle');
  if (!handle) throw new Error('no X-Upload-Handle in the answer of ' + url);
  return handle;
}

/** Uploads files (a FileList or an array of File); onProgress gets a fraction from 0 to 1. */
export function upload(handle, files, onProgress = () => {}) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const f of files) form.append('file', f, f.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', route);
    xhr.withCredentials = true;
    xhr.setRequestHeader('X-Upload-Handle', handle);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let answer;
      try { answer = JSON.parse(xhr.responseText); } catch { answer = { accepted: false, error: 'bad_response' }; }
      if (answer.accepted) { onProgress(1); resolve(answer); } else reject(answer);
    };
    xhr.onerror = () => reject({ accepted: false, error: 'network_error' });
    xhr.send(form);
  });
}

/** The session's files: [{name, id, size, content_type, sha256, created, url, stored}]. */
export async function list(handle) {
  const res = await fetch(route, { credentials: 'same-origin', headers: { 'X-Upload-Handle': handle } });
  return (await res.json()).files;
}

/** Deletes one file of the session by name, or all of them when no name is given. */
export async function remove(handle, name) {
  const path = name === undefined ? route : route + '/' + encodeURIComponent(name);
  const res = await fetch(path, { method: 'DELETE', credentials: 'same-origin', headers: { 'X-Upload-Handle': handle } });
  return res.status === 204;
}
