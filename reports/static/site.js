// Sortable leaderboards. Without this script the tables stay as built: pre-sorted, readable.
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

    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (row, index) {
      return { row: row, index: index, key: keyOf(row, col, numeric) };
    });
    rows.sort(function (a, b) { return compare(a, b, dir); });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (item) { fragment.appendChild(item.row); });
    body.appendChild(fragment);

    Array.prototype.forEach.call(heads, function (other) {
      other.setAttribute("aria-sort", other === th ? NAMES[dir] : "none");
    });
    var status = table.querySelector(".sort-status");
    if (status) {
      status.textContent = " (sorted by " + th.textContent.replace(/[▲▼↑↓]/g, "").trim() +
        ", " + NAMES[dir] + ")";
    }
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
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
