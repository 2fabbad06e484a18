// Typeset the math that pymdownx.arithmatex marks (generic mode: \( \) inline, \[ \] display)
// on every page, including pages reached by Material's instant navigation.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
});
