// The user list: a keyed, virtualized list that touches only what changed.
//
// The backend sends diffs (`upsert` rows and `remove` ids) at most once per
// frame. We keep every user in a Map, keep a sorted order, and render only the
// rows that are in view (plus a small margin). A row's DOM is rewritten only
// when that user changed or the row scrolled into view, so a 5k-user room with
// a few changes per frame costs a few DOM writes, not five thousand.
"use strict";

const ROW_HEIGHT = 48; // px; keep in sync with `.user-row` in style.css
const OVERSCAN = 8; // rows rendered above and below the viewport

class UserList {
  /**
   * @param {HTMLElement} container scrollable element with role="list"
   * @param {HTMLElement} spacer child that gives the container its full height
   */
  constructor(container, spacer) {
    this.container = container;
    this.spacer = spacer;
    this.users = new Map(); // id -> row from the backend
    this.order = []; // ids, sorted for display
    this.index = new Map(); // id -> position in `order`
    this.dirty = new Set(); // ids whose row content changed since the last render
    this.needsSort = false;
    this.rendered = new Map(); // id -> element currently showing that user
    this.pool = []; // detached-from-a-user elements ready for reuse
    this.frameRequested = false;
    this.firstShown = false;
    this.onCount = () => {};
    container.addEventListener("scroll", () => this.schedule(), { passive: true });
    window.addEventListener("resize", () => this.schedule());
  }

  /** Applies one `presence://users` diff. */
  apply(diff) {
    if (diff.full) {
      this.users.clear();
      this.needsSort = true;
      for (const el of this.rendered.values()) {
        el.hidden = true;
        this.pool.push(el);
      }
      this.rendered.clear();
      this.dirty.clear();
    }
    for (const id of diff.remove || []) {
      if (this.users.delete(id)) this.needsSort = true;
    }
    for (const row of diff.upsert || []) {
      const old = this.users.get(row.id);
      if (!old || sortKey(old) !== sortKey(row)) this.needsSort = true;
      this.users.set(row.id, row);
      this.dirty.add(row.id);
    }
    this.schedule();
  }

  /** Asks for a render on the next animation frame (once, however often called). */
  schedule() {
    if (this.frameRequested) return;
    this.frameRequested = true;
    requestAnimationFrame(() => {
      this.frameRequested = false;
      this.render();
    });
  }

  render() {
    if (this.needsSort) {
      this.order = Array.from(this.users.values()).sort(compareUsers).map((u) => u.id);
      this.index.clear();
      this.order.forEach((id, i) => this.index.set(id, i));
      this.spacer.style.height = `${this.order.length * ROW_HEIGHT}px`;
      this.onCount(this.order.length);
    }
    const top = this.container.scrollTop;
    const height = this.container.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.order.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);

    // Release rows that left the window (or whose user left).
    for (const [id, el] of this.rendered) {
      const i = this.index.get(id);
      if (i === undefined || i < first || i >= last || !this.users.has(id)) {
        this.rendered.delete(id);
        el.hidden = true;
        this.pool.push(el);
      }
    }
    const now = Date.now();
    for (let i = first; i < last; i++) {
      const id = this.order[i];
      let el = this.rendered.get(id);
      const fresh = !el;
      if (fresh) {
        el = this.pool.pop() || this.createRow();
        this.rendered.set(id, el);
        el.hidden = false;
      }
      if (fresh || this.dirty.has(id)) fillRow(el, this.users.get(id), now);
      if (fresh || this.needsSort) {
        el.style.transform = `translateY(${i * ROW_HEIGHT}px)`;
        el.setAttribute("aria-posinset", String(i + 1));
        el.setAttribute("aria-setsize", String(this.order.length));
      }
    }
    this.dirty.clear();
    this.needsSort = false;
    if (!this.firstShown && this.order.length > 0) {
      // Lets tools measure start-up: process start to the first list on screen.
      this.firstShown = true;
      performance.mark("mesh:first-list");
    }
  }

  /** Refreshes the countdown of visible short-lived states. */
  tick() {
    const now = Date.now();
    for (const [id, el] of this.rendered) {
      const user = this.users.get(id);
      if (user && user.expiresAt) fillRow(el, user, now);
    }
  }

  createRow() {
    const el = document.createElement("div");
    el.className = "user-row";
    el.setAttribute("role", "listitem");
    el.innerHTML =
      '<span class="avatar" aria-hidden="true"></span>' +
      '<span class="who"><span class="name"></span><span class="you-badge">you</span></span>' +
      '<span class="user-status"></span>' +
      '<span class="expiry"></span>' +
      '<span class="tabs"></span>';
    this.container.appendChild(el);
    return el;
  }
}

function displayName(user) {
  return user.username || user.id;
}

function sortKey(user) {
  return `${user.you ? 0 : 1}${displayName(user).toLowerCase()}\u0000${user.id}`;
}

function compareUsers(a, b) {
  const ka = sortKey(a);
  const kb = sortKey(b);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

function fillRow(el, user, now) {
  const name = displayName(user);
  el.dataset.userId = user.id;
  el.classList.toggle("you", !!user.you);
  el.querySelector(".avatar").textContent = name.slice(0, 1).toUpperCase();
  const nameEl = el.querySelector(".name");
  nameEl.textContent = name;
  nameEl.title = name;
  // A short-lived status that ran out is gone, even before its owner's app
  // publishes the cleared state (or if that app is no longer running).
  const text = user.expiresAt && user.expiresAt <= now ? "" : user.status;
  const status = el.querySelector(".user-status");
  status.textContent = text || "idle";
  // The whole text on hover, however much the row had to cut.
  status.title = text || "";
  status.classList.toggle("idle", !text);
  el.querySelector(".tabs").textContent = user.tabCount === 1 ? "1 tab" : `${user.tabCount} tabs`;
  fillExpiry(el, user, now);
}

function fillExpiry(el, user, now) {
  const expiry = el.querySelector(".expiry");
  if (!user.expiresAt || user.expiresAt <= now) {
    expiry.textContent = "";
    return;
  }
  const left = Math.max(0, Math.round((user.expiresAt - now) / 1000));
  expiry.textContent = left >= 60 ? `${Math.floor(left / 60)} min ${left % 60} s left` : `${left} s left`;
}

window.UserList = UserList;
