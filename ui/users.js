// The user list: a window of rows over a list the backend keeps.
//
// A 5k-user room is never copied into the page. The backend keeps the sorted
// list; the page holds its length (for the scroll height) and the rows around
// what is in view, which it asks for by position (`fetchWindow`, the
// `users_window` command) when it scrolls past them. Each frame that changed
// something the page shows, a `presence://users` event brings the new count
// and, when any row of the page's window changed, that window again. Only the
// rows in view (plus a small overscan) have elements, and an element is
// rewritten only when its row changed or it scrolled into view.
"use strict";

const ROW_HEIGHT = 48; // px; keep in sync with `.user-row` in style.css
const OVERSCAN = 4; // rows drawn above and below the viewport
// Screens of rows fetched beyond the viewport: more in the direction the
// list scrolls, and fetched again once the view is within a screen of the
// window's end, so that a fast scroll finds its rows already here.
const AHEAD = 5;
const BEHIND = 1;
const MAX_WINDOW = 500; // rows the backend sends at most at once (list_view.rs)

class UserList {
  /**
   * @param {HTMLElement} container scrollable element with role="list"
   * @param {HTMLElement} spacer child that gives the container its full height
   * @param {(start: number, end: number) => Promise<object>} fetchWindow asks
   *   the backend for rows `start..end`
   */
  constructor(container, spacer, fetchWindow) {
    this.container = container;
    this.spacer = spacer;
    this.fetchWindow = fetchWindow;
    this.count = 0;
    this.countVersion = 0;
    this.start = 0; // position of rows[0] in the whole list
    this.rows = []; // the rows of our window, as the backend sent them
    this.rowsVersion = 0;
    this.fetching = false; // a window request is on its way
    this.fetchFailed = false; // no retry until the backend sends news
    this.countChanged = true;
    this.lastTop = 0;
    this.direction = 1; // 1: scrolling down, -1: up
    this.rendered = new Map(); // id -> element currently showing that user
    this.pool = []; // hidden elements showing no one, ready for reuse
    // Reused by every frame rather than made anew: a fast scroll renders
    // sixty times a second, and each would be garbage for the page's heap.
    this.wanted = new Map(); // id -> position, of the rows in view we have
    this.freed = []; // elements whose user left the view this frame
    this.missing = 0; // rows in view the last frame had no data for yet
    this.frameRequested = false;
    this.firstShown = false;
    this.onCount = () => {};
    this.onStar = () => {}; // (row) => the star on `row` was clicked
    container.addEventListener("click", (e) => {
      const el = e.target.closest(".star") && e.target.closest(".user-row");
      if (el && el.row) this.onStar(el.row);
    });
    container.addEventListener("scroll", () => this.schedule(), { passive: true });
    window.addEventListener("resize", () => this.schedule());
  }

  /** Takes one `presence://users` event, parsed. */
  apply(update) {
    this.fetchFailed = false;
    this.take(update, false);
    this.schedule();
  }

  /**
   * Keeps the count and rows of `update` unless newer ones are here. A reply
   * to our own request may carry the version an event already brought (for
   * the window we asked for), so it wins a tie; an event does not.
   */
  take(update, isReply) {
    if (update.version >= this.countVersion && update.count !== this.count) {
      this.count = update.count;
      this.countChanged = true;
    }
    this.countVersion = Math.max(this.countVersion, update.version);
    if (!update.rows) return;
    if (update.version > this.rowsVersion || (isReply && update.version === this.rowsVersion)) {
      this.rowsVersion = update.version;
      this.start = update.start;
      this.rows = update.rows;
    }
  }

  /** The row at position `i`, if our window has it. */
  rowAt(i) {
    return this.rows[i - this.start];
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

  /**
   * Fetches a window around rows `first..last` unless we have them all and
   * a screen more in the direction of scrolling.
   */
  ensure(first, last) {
    if (this.fetching || this.fetchFailed || last <= first) return;
    const screen = last - first;
    const end = this.start + this.rows.length;
    const covered = first >= this.start && last <= end;
    const nearEnd =
      this.direction > 0 ? end < this.count && end - last < screen : this.start > 0 && first - this.start < screen;
    if (covered && !nearEnd) return;
    const [above, below] = this.direction > 0 ? [BEHIND, AHEAD] : [AHEAD, BEHIND];
    const start = Math.max(0, first - above * screen);
    this.fetch(start, Math.min(this.count, last + below * screen, start + MAX_WINDOW));
  }

  fetch(start, end) {
    this.fetching = true;
    this.fetchWindow(start, end)
      .then((reply) => this.take(reply, true))
      .catch(() => {
        // Not connected (yet, or any more): the next event brings news.
        this.fetchFailed = true;
      })
      .finally(() => {
        this.fetching = false;
        this.schedule();
      });
  }

  render() {
    const count = this.count;
    if (this.countChanged) {
      this.spacer.style.height = `${count * ROW_HEIGHT}px`;
      this.onCount(count);
    }
    const top = this.container.scrollTop;
    if (top !== this.lastTop) this.direction = top > this.lastTop ? 1 : -1;
    this.lastTop = top;
    const height = this.container.clientHeight || 600;
    const first = Math.min(count, Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN));
    const last = Math.min(count, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    this.ensure(first, last);

    // Who goes where: the rows in view that we have.
    const wanted = this.wanted;
    wanted.clear();
    let missing = 0;
    for (let i = first; i < last; i++) {
      const row = this.rowAt(i);
      if (row) wanted.set(row.id, i);
      else missing++;
    }
    this.missing = missing;
    // Elements whose user left the view take the users who came into it, in
    // this same frame: a scroll then refills and moves elements, where
    // hiding some and showing others would tear down and rebuild a row's
    // boxes for each of them.
    const freed = this.freed;
    for (const [id, el] of this.rendered) {
      if (!wanted.has(id)) {
        this.rendered.delete(id);
        freed.push(el);
      }
    }
    const now = Date.now();
    for (const [id, i] of wanted) {
      const row = this.rowAt(i);
      let el = this.rendered.get(id);
      if (!el) {
        el = freed.pop() || this.pool.pop() || this.createRow();
        this.rendered.set(id, el);
        if (el.hidden) el.hidden = false;
        el.index = -1;
      }
      if (!sameRow(el.row, row)) fillRow(el, row, now);
      el.row = row;
      if (el.index !== i) {
        el.index = i;
        el.style.transform = `translateY(${i * ROW_HEIGHT}px)`;
        el.setAttribute("aria-posinset", String(i + 1));
      }
      if (el.setSize !== count) {
        el.setSize = count;
        el.setAttribute("aria-setsize", String(count));
      }
    }
    // What no one took is hidden until a row needs it.
    for (const el of freed) {
      el.hidden = true;
      el.row = null;
      this.pool.push(el);
    }
    freed.length = 0;
    this.countChanged = false;
    if (!this.firstShown && wanted.size > 0) {
      // Lets tools measure start-up: process start to the first list on screen.
      this.firstShown = true;
      performance.mark("mesh:first-list");
    }
  }

  /** Refreshes the countdown of visible short-lived states. */
  tick() {
    const now = Date.now();
    for (const el of this.rendered.values()) {
      if (el.row && el.row.expiresAt) fillRow(el, el.row, now);
    }
  }

  createRow() {
    const el = document.createElement("div");
    el.className = "user-row";
    el.setAttribute("role", "listitem");
    el.innerHTML =
      '<span class="avatar" aria-hidden="true"></span>' +
      '<span class="who"><button class="star" type="button"></button><span class="name"></span><span class="availability-badge"></span><span class="you-badge">you</span>' +
      '<span class="unverified-badge" title="The server does not vouch for this identity">unverified</span></span>' +
      '<span class="user-status"></span>' +
      '<span class="expiry"></span>' +
      '<span class="tabs"></span>';
    // Its parts, found once rather than on every fill.
    el.parts = {
      avatar: el.querySelector(".avatar"),
      name: el.querySelector(".name"),
      badge: el.querySelector(".availability-badge"),
      status: el.querySelector(".user-status"),
      expiry: el.querySelector(".expiry"),
      tabs: el.querySelector(".tabs"),
      star: el.querySelector(".star"),
    };
    this.container.appendChild(el);
    return el;
  }
}

function displayName(user) {
  return user.username || user.id;
}

/** Whether two rows would draw alike (the backend sends fresh objects). */
function sameRow(a, b) {
  if (!a || !b) return false;
  for (const key in b) {
    if (a[key] !== b[key]) return false;
  }
  return true;
}

function fillRow(el, user, now) {
  const name = displayName(user);
  el.dataset.userId = user.id;
  el.classList.toggle("you", !!user.you);
  el.classList.toggle("unverified", !!user.unverified);
  const parts = el.parts;
  setText(parts.avatar, name.slice(0, 1).toUpperCase());
  setText(parts.name, name);
  setTitle(parts.name, name);
  fillStar(el, user, name);
  // A short-lived status that ran out is gone, even before its owner's app
  // publishes the cleared state (or if that app is no longer running).
  const text = user.expiresAt && user.expiresAt <= now ? "" : user.status;
  const status = parts.status;
  setText(status, text || "idle");
  // The whole text on hover, however much the row had to cut.
  setTitle(status, text || "");
  status.classList.toggle("idle", !text);
  // No tabs: they were here before a reconnect and are kept for a grace
  // period while they come back.
  fillAvailability(el, user);
  const tabs = user.tabCount === 0 ? "reconnecting" : user.tabCount === 1 ? "1 tab" : `${user.tabCount} tabs`;
  setText(parts.tabs, tabs);
  fillExpiry(el, user, now);
}

/** The star toggle: none on your own row; the backend says who is starred. */
function fillStar(el, user, name) {
  const star = el.parts.star;
  if (star.hidden !== !!user.you) star.hidden = !!user.you;
  setText(star, user.starred ? "\u2605" : "\u2606");
  setAttribute(star, "aria-pressed", String(!!user.starred));
  setAttribute(star, "aria-label", `Star ${name}`);
  setTitle(
    star,
    user.starred
      ? "Starred: you are notified when they come online. Click to unstar."
      : "Star: be notified when they come online",
  );
  el.classList.toggle("starred", !!user.starred);
}

const AVAILABILITY_TEXT = { away: "away", busy: "busy", dnd: "do not disturb" };

/** Away automatically (since a time), or what they chose; nothing when available. */
// One formatter for every away badge: `toLocaleTimeString` sets up a new ICU
// formatter per call, and a busy room fills rows every frame.
const AWAY_SINCE = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });

function fillAvailability(el, user) {
  const badge = el.parts.badge;
  if (user.idleSince) {
    el.dataset.availability = "away";
    const since = AWAY_SINCE.format(new Date(user.idleSince));
    setText(badge, `away since ${since}`);
  } else {
    el.dataset.availability = user.availability || "available";
    setText(badge, AVAILABILITY_TEXT[user.availability] || "");
  }
}

function fillExpiry(el, user, now) {
  const expiry = el.parts.expiry;
  if (!user.expiresAt || user.expiresAt <= now) {
    setText(expiry, "");
    return;
  }
  const left = Math.max(0, Math.round((user.expiresAt - now) / 1000));
  setText(expiry, left >= 60 ? `${Math.floor(left / 60)} min ${left % 60} s left` : `${left} s left`);
}

// A row scrolled into view mostly keeps its texts ("1 tab", "idle", no
// badge): writing only the ones that differ spares the web view a new text
// node, and its style and layout, for each of them on every frame of a
// scroll.

/**
 * Sets an element's text when it differs. The element keeps one text node
 * whose data changes: replacing the node (what `textContent` does) would
 * make a new node and new boxes for each write.
 */
function setText(node, text) {
  const child = node.firstChild;
  if (child && child.nodeType === Node.TEXT_NODE && !child.nextSibling) {
    if (child.data !== text) child.data = text;
  } else {
    node.replaceChildren(document.createTextNode(text));
  }
}

/** Sets an element's title when it differs. */
function setTitle(node, title) {
  if (node.title !== title) node.title = title;
}

/** Sets an attribute when it differs. */
function setAttribute(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

window.UserList = UserList;
