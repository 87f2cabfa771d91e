// The class editor: one chip per class (its colour, its name and synonyms,
// a remove button) and a text field for the next one. Typing `;` or Enter
// ends a class; `,` separates synonyms inside one. Pasting "sky; horse, pony"
// makes two chips. The request's label string is the chips and the pending
// text joined with "; " (crates/segment parses and checks it).

/** The classes written in `text` ("a; b, c" -> ["a", "b, c"]), empty ones dropped. */
export function splitClasses(text) {
  return text.split(';').map((s) => s.trim()).filter(Boolean);
}

/** The label string of `classes` and the text not yet ended with `;`. */
export function labelText(classes, pending = '') {
  return [...classes, pending.trim()].filter(Boolean).join('; ');
}

export class ClassEditor {
  /**
   * @param {HTMLElement} list  the <ul> the chips go in
   * @param {HTMLInputElement} input  the text field for the next class
   * @param {(classes: string[], pending: string) => void} onChange
   */
  constructor(list, input, onChange) {
    this.list = list;
    this.input = input;
    this.onChange = onChange;
    this.classes = [];
    input.addEventListener('keydown', (e) => this.onKey(e));
    input.addEventListener('input', () => this.onInput());
  }

  /** Show `classes` (and `pending` in the field) without reporting a change. */
  set(classes, pending = '') {
    this.classes = [...classes];
    this.input.value = pending;
    this.render();
  }

  /** Colour the chips: `colorOf(index)` is `[r, g, b]` or null. */
  setColors(colorOf) {
    this.colorOf = colorOf;
    this.render();
  }

  changed() {
    this.render();
    this.onChange([...this.classes], this.input.value);
  }

  onKey(e) {
    if (e.key === 'Enter' || e.key === ';') {
      e.preventDefault();
      this.commit();
    } else if (e.key === 'Backspace' && !this.input.value && this.classes.length) {
      // Backspace in an empty field takes the last chip back for editing.
      e.preventDefault();
      this.input.value = this.classes.pop();
      this.changed();
    }
  }

  /** Text with `;` in it (pasted, or filled in by a test) becomes chips, up to its last `;`. */
  onInput() {
    const text = this.input.value;
    if (text.includes(';')) {
      const parts = text.split(';');
      const rest = parts.pop();
      this.classes.push(...splitClasses(parts.join(';')));
      this.input.value = rest.trimStart();
    }
    this.changed();
  }

  commit() {
    this.classes.push(...splitClasses(this.input.value));
    this.input.value = '';
    this.changed();
  }

  remove(index) {
    this.classes.splice(index, 1);
    this.changed();
    this.input.focus();
  }

  edit(index) {
    const pending = this.input.value.trim();
    const [text] = this.classes.splice(index, 1, ...(pending ? [pending] : []));
    this.input.value = text;
    this.changed();
    this.input.focus();
  }

  clear() {
    this.classes = [];
    this.input.value = '';
    this.changed();
  }

  render() {
    this.list.replaceChildren(
      ...this.classes.map((text, index) => {
        const chip = document.createElement('li');
        chip.className = 'chip';
        const color = this.colorOf?.(index);
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        if (color) swatch.style.background = `rgb(${color.join(', ')})`;
        const name = document.createElement('button');
        name.type = 'button';
        name.className = 'chip-text';
        name.textContent = text;
        name.title = 'edit this class';
        name.addEventListener('click', () => this.edit(index));
        const remove = document.createElement('button');
        remove.type = 'button';
        remove.className = 'chip-remove';
        remove.textContent = '×';
        remove.setAttribute('aria-label', `remove ${text}`);
        remove.addEventListener('click', () => this.remove(index));
        chip.append(swatch, name, remove);
        return chip;
      }),
    );
  }
}
