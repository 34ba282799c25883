// The token form shown when whoami or the stream answers 401/403.

import { ApiError, clearToken, saveToken, whoami } from './api.js';
import { t } from './i18n.js';

/**
 * Shows `#login-form` and resolves with whoami's answer once a token works.
 * `reason` is the ApiError that brought us here (its status is shown).
 */
export function askForToken(reason) {
  const form = document.getElementById('login-form');
  const box = document.getElementById('login');
  const input = form.querySelector('input[name="token"]');
  const message = document.getElementById('login-message');
  box.hidden = false;
  document.body.dataset.login = 'true';
  message.textContent = reason && reason.isAuth && reason.hadToken ? t('login.wrong', { code: reason.status }) : '';
  input.focus();
  return new Promise((resolve) => {
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      saveToken(token);
      message.textContent = '';
      try {
        const me = await whoami();
        box.hidden = true;
        delete document.body.dataset.login;
        form.onsubmit = null;
        input.value = '';
        resolve(me);
      } catch (err) {
        if (err instanceof ApiError && err.isAuth) {
          clearToken();
          message.textContent = t('login.wrong', { code: err.status });
        } else {
          message.textContent = t('login.network');
        }
      }
    };
  });
}

/**
 * whoami, asking for a token until one works. Network failures are retried
 * with `onNetworkError` called each time so the page can say so.
 */
export async function signIn({ hadToken, onNetworkError }) {
  for (let delay = 500; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await whoami();
    } catch (err) {
      if (err instanceof ApiError && err.isAuth) {
        err.hadToken = hadToken;
        return askForToken(err);
      }
      onNetworkError?.(err);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** Wires a sign-out button: forget the token and reload. */
export function bindLogout(button) {
  button.addEventListener('click', () => {
    clearToken();
    location.reload();
  });
}
