// The example gallery: bundled photos (scikit-image's data set, public domain
// or CC0; scripts/gen_gallery.py, README "Example photos"), each with class
// names that fit it. One click loads the photo and its classes.

const asset = (path) => new URL(`./assets/${path}`, import.meta.url).href;

export const EXAMPLES = Object.freeze([
  { id: 'cat', title: 'Cat', image: asset('example.png'), thumb: asset('gallery/cat.thumb.jpg'),
    labels: ['cat', 'grass, lawn', 'wall', 'sky'], credit: 'Stefan van der Walt, CC0' },
  { id: 'coffee', title: 'Coffee', image: asset('gallery/coffee.jpg'), thumb: asset('gallery/coffee.thumb.jpg'),
    labels: ['coffee cup, mug', 'saucer, plate', 'spoon', 'table, wood'], credit: 'Rachel Michetti, CC0' },
  { id: 'astronaut', title: 'Astronaut', image: asset('gallery/astronaut.jpg'), thumb: asset('gallery/astronaut.thumb.jpg'),
    labels: ['person, astronaut', 'flag', 'space shuttle model', 'wall'], credit: 'NASA, public domain' },
  { id: 'rocket', title: 'Rocket launch', image: asset('gallery/rocket.jpg'), thumb: asset('gallery/rocket.thumb.jpg'),
    labels: ['rocket', 'smoke', 'sky', 'trees', 'launch tower'], credit: 'SpaceX, public domain' },
]);

/** The first example: shown when the page opens. */
export const DEFAULT_EXAMPLE = EXAMPLES[0];

/** The example named `id`, or undefined. */
export const exampleById = (id) => EXAMPLES.find((e) => e.id === id);

/** Fill `list` with one button per example; `onPick(example)` on click or Enter. */
export function renderGallery(list, onPick) {
  list.replaceChildren(
    ...EXAMPLES.map((example) => {
      const item = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'example';
      button.dataset.example = example.id;
      button.setAttribute('aria-label', `Segment the example photo "${example.title}" into ${example.labels.join('; ')}`);
      const img = document.createElement('img');
      img.src = example.thumb;
      img.alt = '';
      img.loading = 'lazy';
      const caption = document.createElement('span');
      caption.textContent = example.title;
      button.append(img, caption);
      button.title = `${example.labels.join('; ')} (photo: ${example.credit})`;
      button.addEventListener('click', () => onPick(example));
      item.append(button);
      return item;
    }),
  );
}

/** Mark the example on show (or none, for the user's own image). */
export function markCurrentExample(list, id) {
  for (const button of list.querySelectorAll('button.example')) {
    button.setAttribute('aria-current', button.dataset.example === id ? 'true' : 'false');
  }
}
