/* policyshift report runtime: renders the embedded plotly figures and records the page's health.
 * Loaded in <head>, before plotly.js, so errors raised while plotly itself loads are caught too.
 * When done it sets body.dataset.rendered = "ok" (or "error") and body.dataset.errors = "[...]", which is
 * what the headless-browser test reads: a page that loads but silently fails a plot is a failure. */
(function () {
  "use strict";
  var errors = [];

  function publish() {
    if (document.body) document.body.dataset.errors = JSON.stringify(errors);
  }

  function record(message) {
    errors.push(String(message));
    publish();
  }

  window.addEventListener("error", function (event) {
    record(event.message || "error loading " + ((event.target && event.target.src) || "a resource"));
  }, true);
  window.addEventListener("unhandledrejection", function (event) {
    var reason = event.reason;
    record((reason && reason.message) || reason);
  });
  var consoleError = console.error;
  console.error = function () {
    record(Array.prototype.slice.call(arguments).join(" "));
    return consoleError.apply(console, arguments);
  };

  function renderFigure(node) {
    var target = document.getElementById(node.dataset.target);
    if (!target) throw new Error("no element #" + node.dataset.target + " for a figure");
    var figure = JSON.parse(node.textContent);
    var config = Object.assign({ displaylogo: false, responsive: true }, figure.config || {});
    return Plotly.newPlot(target, figure.data, figure.layout, config);
  }

  function renderAll() {
    var nodes = document.querySelectorAll("script.ps-figure");
    var jobs = [];
    if (nodes.length && typeof Plotly === "undefined") {
      record("plotly.js is missing from the page: figures cannot be drawn");
      nodes = [];
    }
    Array.prototype.forEach.call(nodes, function (node) {
      try {
        jobs.push(Promise.resolve(renderFigure(node)).catch(function (err) {
          record("figure " + node.dataset.target + ": " + ((err && err.message) || err));
        }));
      } catch (err) {
        record("figure " + node.dataset.target + ": " + ((err && err.message) || err));
      }
    });
    return Promise.all(jobs).then(function () {
      publish();
      document.body.dataset.rendered = errors.length ? "error" : "ok";
    });
  }

  window.policyshiftReport = { renderAll: renderAll, errors: errors };
})();
