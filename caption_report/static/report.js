(function () {
  "use strict";
  var grid = document.getElementById("grid");
  var controls = document.getElementById("controls");
  if (!grid || !controls) { return; }
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  var sortSel = document.getElementById("sort");
  var minIn = document.getElementById("min-score");
  var maxIn = document.getElementById("max-score");
  var shown = document.getElementById("visible-count");
  var reviewOnly = document.getElementById("needs-review");  // only when some captions need review
  controls.hidden = false;
  controls.addEventListener("submit", function (ev) { ev.preventDefault(); });

  function score(card) {
    var v = parseFloat(card.getAttribute("data-score"));
    return isNaN(v) ? -Infinity : v;
  }
  function rank(card) { return parseInt(card.getAttribute("data-rank"), 10); }
  function bound(input) {
    var v = parseFloat(input.value);
    return isNaN(v) ? null : v;
  }
  function readHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) {
        try { out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1)); }
        catch (e) { /* ignore malformed fragments */ }
      }
    });
    return out;
  }
  function writeHash() {
    var parts = [];
    if (sortSel.value !== "score-asc") { parts.push("sort=" + sortSel.value); }
    if (bound(minIn) !== null) { parts.push("min=" + encodeURIComponent(minIn.value)); }
    if (bound(maxIn) !== null) { parts.push("max=" + encodeURIComponent(maxIn.value)); }
    if (reviewOnly && reviewOnly.checked) { parts.push("review=1"); }
    var h = parts.length ? "#" + parts.join("&") : "";
    if (h !== location.hash) {
      try { history.replaceState(null, "", h || location.pathname + location.search); }
      catch (e) { /* file:// in some browsers */ }
    }
  }
  function apply() {
    var desc = sortSel.value === "score-desc";
    var sorted = cards.slice().sort(function (a, b) {
      var sa = score(a), sb = score(b);
      if (sa !== sb) { return (sa < sb ? -1 : 1) * (desc ? -1 : 1); }
      return rank(a) - rank(b);
    });
    var lo = bound(minIn), hi = bound(maxIn), visible = 0;
    sorted.forEach(function (card) {
      var s = score(card);
      var hide = (lo !== null && s < lo) || (hi !== null && s > hi) ||
        (reviewOnly !== null && reviewOnly.checked && !card.hasAttribute("data-review"));
      card.hidden = hide;
      if (!hide) { visible += 1; }
      grid.appendChild(card);
    });
    grid.setAttribute("data-sort", desc ? "score-desc" : "score-asc");
    shown.textContent = visible + " of " + cards.length + " shown";
  }
  function fromHash() {
    var p = readHash();
    sortSel.value = p.sort === "score-desc" ? "score-desc" : "score-asc";
    minIn.value = p.min !== undefined && !isNaN(parseFloat(p.min)) ? p.min : "";
    maxIn.value = p.max !== undefined && !isNaN(parseFloat(p.max)) ? p.max : "";
    if (reviewOnly) { reviewOnly.checked = p.review === "1"; }
    apply();
  }
  [sortSel, minIn, maxIn, reviewOnly].filter(Boolean).forEach(function (el) {
    el.addEventListener("input", function () { apply(); writeHash(); });
    el.addEventListener("change", function () { apply(); writeHash(); });
  });
  document.getElementById("reset").addEventListener("click", function () {
    sortSel.value = "score-asc"; minIn.value = ""; maxIn.value = "";
    if (reviewOnly) { reviewOnly.checked = false; }
    apply(); writeHash();
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
