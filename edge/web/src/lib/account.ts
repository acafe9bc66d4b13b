// Signing in and out (and, on the customer page, signing up): the session token stays in the
// tab's sessionStorage and goes with every call as "authorization: Bearer <token>".

import type { Client } from "@connectrpc/connect";
import { AccountService } from "@gen/delivery/order/v1/account_service_pb";
import type { User } from "@gen/delivery/order/v1/account_pb";
import { Role } from "@gen/delivery/common/v1/common_pb";
import { describeError, isUnauthenticated, requestId, type Session } from "./rpc";
import { busy, field, fill, h, say } from "./dom";

export interface AccountOptions {
  session: Session;
  accounts: Client<typeof AccountService>;
  /** The role this page is for. */
  role: Role;
  /** How the page calls that role, e.g. "a customer". */
  roleName: string;
  /** Whether the page offers a sign-up form (customers sign themselves up). */
  signUp: boolean;
  onSignedIn(user: User): void;
  onSignedOut(): void;
}

/** Renders the account box into ``box`` and keeps it current. */
export function mountAccount(box: HTMLElement, options: AccountOptions): void {
  const { session, accounts } = options;

  const signedIn = (user: User) => {
    const out = h("button", { type: "button", class: "secondary" }, "Sign out");
    out.addEventListener("click", async () => {
      try {
        await accounts.logout({});
      } catch {
        // Revoked or expired already: signing out here is all that is left to do.
      }
      session.token = "";
      showForms();
      options.onSignedOut();
    });
    fill(box, h("p", { class: "who", "data-testid": "signed-in" }, "Signed in as ", h("strong", { text: user.name || user.email }), ` (${user.email}) `, out));
    options.onSignedIn(user);
  };

  const wrongRole = (user: User) => {
    session.token = "";
    showForms(`${user.email} is not ${options.roleName}; this page is for ${options.roleName}.`);
  };

  const accept = (user: User | undefined, token: string) => {
    if (!user) return;
    if (user.role !== options.role) {
      session.token = "";
      wrongRole(user);
      return;
    }
    session.token = token;
    signedIn(user);
  };

  const showForms = (message = "") => {
    const alert = h("p", { class: "alert", role: "alert", hidden: true });
    const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
    const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true, minlength: 8 });
    const signInButton = h("button", { type: "submit" }, "Sign in");
    const signInForm = h(
      "form",
      { class: "card", "aria-labelledby": "sign-in-title" },
      h("h3", { id: "sign-in-title", text: "Sign in" }),
      field("Email", email),
      field("Password", password),
      signInButton,
    );
    signInForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void busy(signInButton, alert, async () => {
        const reply = await accounts.login({ email: email.value, password: password.value });
        accept(reply.user, reply.sessionToken);
      }, describeError);
    });
    const forms: HTMLElement[] = [signInForm];
    if (options.signUp) {
      const name = h("input", { name: "name", autocomplete: "name", required: true });
      const newEmail = h("input", { type: "email", name: "new-email", autocomplete: "email", required: true });
      const phone = h("input", { type: "tel", name: "phone", autocomplete: "tel", placeholder: "+358401234567" });
      const newPassword = h("input", { type: "password", name: "new-password", autocomplete: "new-password", required: true, minlength: 8 });
      const signUpButton = h("button", { type: "submit" }, "Create account");
      // One key per filled-in form: a retry after a lost answer creates one account.
      let key = requestId();
      const signUpForm = h(
        "form",
        { class: "card", "aria-labelledby": "sign-up-title" },
        h("h3", { id: "sign-up-title", text: "New here? Create an account" }),
        field("Name", name),
        field("Email", newEmail),
        field("Phone (optional)", phone),
        field("Password", newPassword, "At least 8 characters."),
        signUpButton,
      );
      signUpForm.addEventListener("input", () => {
        key = requestId();
      });
      signUpForm.addEventListener("submit", (ev) => {
        ev.preventDefault();
        void busy(signUpButton, alert, async () => {
          const reply = await accounts.signUp({
            requestId: key,
            email: newEmail.value,
            password: newPassword.value,
            name: name.value,
            phone: phone.value,
            role: options.role,
          });
          accept(reply.user, reply.sessionToken);
        }, describeError);
      });
      forms.push(signUpForm);
    }
    fill(box, h("div", { class: "forms" }, forms), alert);
    say(alert, message);
  };

  // A call anywhere on the page found the session over: back to signing in, saying why.
  session.onEnded(() => {
    showForms("Your session ended; please sign in again.");
    options.onSignedOut();
  });

  if (!session.token) {
    showForms();
    return;
  }
  fill(box, h("p", { text: "Checking your session…" }));
  accounts.getMe({}).then(
    (reply) => accept(reply.user, session.token),
    (err) => {
      session.token = "";
      showForms(isUnauthenticated(err) ? "Your session ended; please sign in again." : describeError(err));
    },
  );
}
