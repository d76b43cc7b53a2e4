// Every console page: local times, copy buttons, confirmations, sortable tables.
// No inline script anywhere (the CSP refuses it); pages add static/js/<page>.js.
"use strict";

(function () {
  const pad = (n) => String(n).padStart(2, "0");

  // <time datetime="...Z" title="... UTC">: shown in the viewer's zone, UTC kept on hover.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-local])").forEach((el) => {
      const at = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(at.getTime())) return;
      el.dataset.local = "1";
      el.textContent =
        `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())} ` +
        `${pad(at.getHours())}:${pad(at.getMinutes())}:${pad(at.getSeconds())}`;
    });
  }

  // <button data-copy="#id">: copies the target's text (or value).
  function copyButtons(root) {
    root.querySelectorAll("button[data-copy]:not([data-bound])").forEach((button) => {
      button.dataset.bound = "1";
      button.addEventListener("click", async () => {
        const target = document.querySelector(button.dataset.copy);
        if (!target) return;
        const text = "value" in target ? target.value : target.textContent;
        try {
          await navigator.clipboard.writeText(text.trim());
          button.textContent = "Copied";
        } catch (err) {
          if ("select" in target) target.select();
          button.textContent = "Press Ctrl+C";
        }
      });
    });
  }

  // <form data-confirm="...">: asks before submitting (htmx forms use hx-confirm instead).
  function confirmations(root) {
    root.querySelectorAll("form[data-confirm]:not([data-bound])").forEach((form) => {
      form.dataset.bound = "1";
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  // <table data-sortable>: header buttons sort rows by data-sort-value (numbers) or text.
  // Rows in <tfoot> (totals) stay put.
  function sortableTables(root) {
    root.querySelectorAll("table[data-sortable]:not([data-bound])").forEach((table) => {
      table.dataset.bound = "1";
      table.querySelectorAll("thead th[data-sort]").forEach((th, index) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "sort";
        button.textContent = th.textContent;
        th.textContent = "";
        th.appendChild(button);
        button.addEventListener("click", () => {
          const column = Array.from(th.parentNode.children).indexOf(th);
          const descending = th.getAttribute("aria-sort") !== "descending";
          table.querySelectorAll("thead th").forEach((other) => other.removeAttribute("aria-sort"));
          th.setAttribute("aria-sort", descending ? "descending" : "ascending");
          const body = table.tBodies[0];
          const rows = Array.from(body.rows);
          const key = (row) => {
            const cell = row.cells[column];
            if (!cell) return "";
            const raw = cell.dataset.sortValue;
            if (raw !== undefined && raw !== "" && !Number.isNaN(Number(raw))) return Number(raw);
            return (raw !== undefined ? raw : cell.textContent).trim().toLowerCase();
          };
          rows.sort((a, b) => {
            const x = key(a), y = key(b);
            const order = x < y ? -1 : x > y ? 1 : 0;
            return descending ? -order : order;
          });
          rows.forEach((row) => body.appendChild(row));
        });
        void index;
      });
    });
  }

  function enhance(root) {
    localTimes(root);
    copyButtons(root);
    confirmations(root);
    sortableTables(root);
  }

  window.Breakwater = window.Breakwater || {};
  window.Breakwater.enhance = enhance;
  document.addEventListener("DOMContentLoaded", () => enhance(document));
  // Fragments swapped in by htmx get the same treatment.
  document.addEventListener("htmx:load", (event) => enhance(event.target));
})();
