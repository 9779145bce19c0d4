// Sortable leaderboards with sticky identity columns. Without this script the tables stay as
// built: pre-sorted, readable, with only the method column and the header row sticky.
// A header's first click sorts its better values first (data-first: "desc" for
// higher-is-better columns, "asc" otherwise); each further click reverses. Cells carry their
// sort key in data-sort; empty keys (no value) always go last.
(function () {
  "use strict";

  var NAMES = { asc: "ascending", desc: "descending" };

  function keyOf(row, col, numeric) {
    var cell = row.children[col];
    var raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null || raw === "") return null;
    if (!numeric) return raw.toLowerCase();
    var value = parseFloat(raw);
    return isNaN(value) ? null : value;
  }

  function compare(a, b, dir) {
    if (a.key === null || b.key === null) {
      if (a.key === b.key) return a.index - b.index;
      return a.key === null ? 1 : -1;
    }
    if (a.key < b.key) return dir === "asc" ? -1 : 1;
    if (a.key > b.key) return dir === "asc" ? 1 : -1;
    return a.index - b.index;
  }

  function sortBy(table, th) {
    var heads = table.querySelectorAll("thead th[data-col]");
    var col = parseInt(th.getAttribute("data-col"), 10);
    var numeric = th.getAttribute("data-type") === "num";
    var first = th.getAttribute("data-first") === "desc" ? "desc" : "asc";
    var current = th.getAttribute("aria-sort");
    var dir = first;
    if (current === NAMES.asc) dir = "desc";
    if (current === NAMES.desc) dir = "asc";

    // each body on its own: pinned rows (a tbody of their own) stay above the ranked ones
    Array.prototype.forEach.call(table.tBodies, function (body) {
      var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
        return { row: row, index: index, key: keyOf(row, col, numeric) };
      });
      rows.sort(function (a, b) { return compare(a, b, dir); });
      var fragment = document.createDocumentFragment();
      rows.forEach(function (item) { fragment.appendChild(item.row); });
      body.appendChild(fragment);
    });

    Array.prototype.forEach.call(heads, function (other) {
      other.setAttribute("aria-sort", other === th ? NAMES[dir] : "none");
    });
    var status = table.querySelector(".sort-status");
    if (status) {
      status.textContent = " (sorted by " + th.textContent.replace(/[▲▼↑↓]/g, "").trim() +
        ", " + NAMES[dir] + ")";
    }
  }

  // Sticky identity columns. The stylesheet sticks the header row and the method column on
  // its own; here the other columns that name a row (model when shown, then params: every
  // column up to the params cells) stick too, each at the summed widths of the sticky columns
  // before it. The offsets live on the table (data-sticky, data-sticky-edge, --sticky-left-N),
  // not on cells, so sorting, which moves whole rows, keeps them right. They are measured
  // again whenever a leading column or the table's wrapper resizes. Where the identity columns
  // would fill more than MAX_SHARE of the visible width (a phone, long params), the middle
  // ones (the model) scroll under the method column, and at worst only the method sticks.
  var MAX_STICKY = 6;   // columns the stylesheet has rules for
  var MAX_SHARE = 0.7;

  // The leading cells up to the last params cell: a row header, unclassed cells (the model)
  // and params cells (one, or one per label in a view); the first other cell ends them.
  function identityCount(table) {
    var row = table.tBodies[0] && table.tBodies[0].rows[0];
    var count = 1;
    if (!row) return count;
    for (var i = 1; i < row.cells.length && i < MAX_STICKY; i++) {
      var cell = row.cells[i];
      if (cell.classList.contains("params")) count = i + 1;
      else if (cell.className) break;
    }
    return count;
  }

  function measure(table) {
    var row = (table.tHead && table.tHead.rows[0]) || (table.tBodies[0] && table.tBodies[0].rows[0]);
    if (!row || !row.cells.length) return { keep: [0], lefts: [0] };
    var wrap = table.closest(".table-wrap") || document.documentElement;
    var n = Math.min(identityCount(table), row.cells.length);
    var widths = [];
    for (var i = 0; i < n; i++) widths.push(row.cells[i].getBoundingClientRect().width);
    // method first, then params (the last), then the ones between, while they fit
    var order = [0];
    if (n > 1) order.push(n - 1);
    for (i = 1; i < n - 1; i++) order.push(i);
    var budget = wrap.clientWidth * MAX_SHARE;
    var keep = [0];
    var total = widths[0];
    for (i = 1; i < order.length; i++) {
      if (total + widths[order[i]] > budget) continue;
      keep.push(order[i]);
      total += widths[order[i]];
    }
    keep.sort(function (a, b) { return a - b; });
    var lefts = [0];
    for (i = 1; i < keep.length; i++) lefts.push(lefts[i - 1] + widths[keep[i - 1]]);
    return { keep: keep, lefts: lefts };
  }

  function apply(table, layout) {
    var columns = layout.keep.map(function (i) { return String(i + 1); });
    table.setAttribute("data-sticky", columns.join(" "));
    table.setAttribute("data-sticky-edge", columns[columns.length - 1]);
    for (var col = 2; col <= MAX_STICKY; col++) {
      var at = layout.keep.indexOf(col - 1);
      var name = "--sticky-left-" + col;
      if (at > 0) table.style.setProperty(name, layout.lefts[at] + "px");
      else table.style.removeProperty(name);
    }
  }

  function stickAll(tables) {
    var layouts = Array.prototype.map.call(tables, measure);  // read everything, then write
    Array.prototype.forEach.call(tables, function (table, i) { apply(table, layouts[i]); });
  }

  function watchScroll(table) {
    var wrap = table.closest(".table-wrap");
    if (!wrap) return;
    var update = function () { wrap.classList.toggle("scrolled-x", wrap.scrollLeft > 0); };
    wrap.addEventListener("scroll", update, { passive: true });
    update();
  }

  function initSticky(tables) {
    if (!tables.length) return;
    var pending = false;
    var schedule = function () {
      if (pending) return;
      pending = true;
      window.requestAnimationFrame(function () { pending = false; stickAll(tables); });
    };
    stickAll(tables);
    Array.prototype.forEach.call(tables, watchScroll);
    if (typeof ResizeObserver === "function") {
      var observer = new ResizeObserver(schedule);
      Array.prototype.forEach.call(tables, function (table) {
        var wrap = table.closest(".table-wrap");
        if (wrap) observer.observe(wrap);
        var row = table.tHead && table.tHead.rows[0];
        var cells = row ? row.cells : [];
        for (var i = 0; i < cells.length && i < MAX_STICKY; i++) observer.observe(cells[i]);
      });
    }
    window.addEventListener("resize", schedule);
  }

  function init() {
    var tables = document.querySelectorAll("table.leaderboard");
    Array.prototype.forEach.call(tables, function (table) {
      var heads = table.querySelectorAll("thead th[data-col]");
      Array.prototype.forEach.call(heads, function (th) {
        var button = th.querySelector("button");
        if (button) button.addEventListener("click", function () { sortBy(table, th); });
      });
    });
    initSticky(tables);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
