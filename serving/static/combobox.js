// The class picker: a filterable list box over a model's class names (1,000 for ImageNet), with
// the ARIA 1.2 combobox pattern. Typing filters by id or by every word of the name (client-side,
// no request); ArrowDown/ArrowUp move through the matches, Home/End jump, Enter or a click picks,
// Escape closes and restores the picked class. Only the first SHOWN matches are put in the DOM:
// a list of 1,000 nodes rebuilt on every key press made typing lag on slow machines, and nobody
// scrolls past a few dozen; the hint says how many more there are.
"use strict";

// Names come from the model file, written by whoever trained it. A bidirectional control
// character (U+202E RIGHT-TO-LEFT OVERRIDE and its kin, the "Trojan Source" set) in one would
// reorder what the page shows after it, in the name and in every caption that quotes it: each is
// shown as its code point instead, "[U+202E]", so a name reads as the bytes it holds.
const BIDI_CONTROLS = /[\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/g;

function visibleText(text) {
  return String(text).replace(BIDI_CONTROLS,
    (c) => `[U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}]`);
}

class ClassPicker {
  static SHOWN = 100;

  constructor(input, list, hint, onPick) {
    Object.assign(this, { input, list, hint, onPick });
    this.names = [];
    this.selected = 0;
    this.matches = [];
    this.active = -1;
    input.addEventListener("input", () => this.filter(input.value, true));
    input.addEventListener("keydown", (e) => this.key(e));
    input.addEventListener("focus", () => input.select());
    input.addEventListener("blur", () => setTimeout(() => this.close(true), 0));
    // mousedown, not click: picking must happen before the input's blur closes the list.
    list.addEventListener("mousedown", (e) => {
      const li = e.target.closest("li[data-id]");
      e.preventDefault();
      if (li) this.pick(Number(li.dataset.id));
    });
  }

  setNames(names, selected) {
    this.names = names.map(visibleText);
    this.pick(Math.min(Math.max(selected, 0), names.length - 1), false);
  }

  label(id) { return `${id}: ${this.names[id]}`; }

  // The ids whose name holds every word of `query` (case-insensitive), or the id it spells.
  search(query) {
    const q = query.trim().toLowerCase();
    if (q === "" || q === this.label(this.selected).toLowerCase()) {
      return this.names.map((_, id) => id);
    }
    const words = q.split(/\s+/);
    const out = [];
    const exact = /^\d+$/.test(q) ? Number(q) : -1;
    if (exact >= 0 && exact < this.names.length) out.push(exact);
    this.names.forEach((name, id) => {
      const text = `${id}: ${name}`.toLowerCase();
      if (id !== exact && words.every((w) => text.includes(w))) out.push(id);
    });
    return out;
  }

  filter(query, open) {
    this.matches = this.search(query);
    this.active = this.matches.length ? 0 : -1;
    this.render();
    const n = this.matches.length;
    this.hint.textContent = n === 0 ? `no class matches “${query.trim()}”`
      : n === this.names.length ? `${n} classes: type to search`
      : `${n} of ${this.names.length} classes match`;
    if (open) this.open();
  }

  render() {
    const items = this.matches.slice(0, ClassPicker.SHOWN).map((id, k) => {
      const li = document.createElement("li");
      li.id = `class-option-${id}`;
      li.setAttribute("role", "option");
      li.dataset.id = String(id);
      li.setAttribute("aria-selected", String(k === this.active));
      const num = document.createElement("span");
      num.className = "id";
      num.textContent = String(id);
      li.append(num, this.names[id]);
      return li;
    });
    const more = this.matches.length - items.length;
    if (more > 0) {
      const li = document.createElement("li");
      li.className = "more";
      li.setAttribute("aria-hidden", "true");
      li.textContent = `… ${more} more: type to narrow`;
      items.push(li);
    }
    this.list.replaceChildren(...items);
    this.markActive();
  }

  markActive() {
    this.list.querySelectorAll("li[data-id]").forEach((li, k) => {
      li.setAttribute("aria-selected", String(k === this.active));
    });
    const li = this.active >= 0 ? this.list.querySelector(`#class-option-${this.matches[this.active]}`)
      : null;
    if (li) {
      this.input.setAttribute("aria-activedescendant", li.id);
      li.scrollIntoView({ block: "nearest" });
    } else {
      this.input.removeAttribute("aria-activedescendant");
    }
  }

  open() {
    this.list.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
  }

  close(restore) {
    this.list.hidden = true;
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
    if (restore) this.input.value = this.label(this.selected);
  }

  pick(id, notify = true) {
    this.selected = id;
    this.input.value = this.label(id);
    this.input.removeAttribute("aria-invalid");
    this.close(false);
    this.hint.textContent = `${this.names.length} classes: type to search`;
    if (notify && this.onPick) this.onPick(id);
  }

  key(e) {
    const shown = Math.min(this.matches.length, ClassPicker.SHOWN);
    const move = (to) => {
      e.preventDefault();
      if (this.list.hidden) this.filter(this.input.value, true);
      else if (shown) { this.active = (to + shown) % shown; this.markActive(); }
    };
    if (e.key === "ArrowDown") move(this.active + 1);
    else if (e.key === "ArrowUp") move(this.active - 1);
    else if (e.key === "Home" && !this.list.hidden) move(0);
    else if (e.key === "End" && !this.list.hidden) move(shown - 1);
    else if (e.key === "Enter" && !this.list.hidden) {
      e.preventDefault();  // picks; does not submit the form
      if (this.active >= 0) this.pick(this.matches[this.active]);
    } else if (e.key === "Escape" && !this.list.hidden) {
      e.preventDefault();
      this.close(true);
    }
  }
}
