// The clinic web chat: sends photos and questions, shows the bot's messages as they arrive.
// Bot and user text only ever reach the page through textContent and text nodes, never as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const QUICK_POLL_MS = 250; // for a few seconds after the person did something
  const QUICK_FOR_MS = 3000;
  const RETRY_MS = 3000;
  const NOTICE_MS = 6000;
  const MAX_UPLOAD_BYTES = 20 * 1024 * 1024;
  const MAX_CAPTION = 1024;
  const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:", "tel:"]);
  const RTL_LANGUAGES = new Set(["ar"]);

  const LABELS = {
    en: {
      title: "SkinGPT clinic chat",
      hint: "Send a clear, close-up photo of the skin and ask your question. Type /start to see how it works.",
      conversation: "Conversation",
      typing: "The bot is typing…",
      photo: "Photo",
      questionLabel: "Your question or message",
      questionPlaceholder: "Write your question…",
      send: "Send",
      sending: "Sending…",
      removePhoto: "Remove photo",
      previewAlt: "Chosen photo",
      yourPhoto: "The photo you sent",
      file: "File",
      tooLarge: "The file is larger than 20 MB. Send a smaller photo.",
      emptyMessage: "Write a message or choose a photo first.",
      offline: "Connection lost. Trying again…",
      sessionEnded: "The chat session has ended. Reload the page.",
      staleButton: "This button is no longer available.",
      failed: "Sending failed. Please try again.",
      unsupportedButton: "Not available in this chat",
    },
    es: {
      title: "Chat de SkinGPT para la clínica",
      hint: "Envíe una foto clara y de cerca de la piel y escriba su pregunta. Escriba /start para ver cómo funciona.",
      conversation: "Conversación",
      typing: "El bot está escribiendo…",
      photo: "Foto",
      questionLabel: "Su pregunta o mensaje",
      questionPlaceholder: "Escriba su pregunta…",
      send: "Enviar",
      sending: "Enviando…",
      removePhoto: "Quitar la foto",
      previewAlt: "Foto elegida",
      yourPhoto: "La foto que envió",
      file: "Archivo",
      tooLarge: "El archivo supera los 20 MB. Envíe una foto más pequeña.",
      emptyMessage: "Escriba un mensaje o elija una foto primero.",
      offline: "Sin conexión. Reintentando…",
      sessionEnded: "La sesión terminó. Vuelva a cargar la página.",
      staleButton: "Este botón ya no está disponible.",
      failed: "No se pudo enviar. Inténtelo de nuevo.",
      unsupportedButton: "No disponible en este chat",
    },
    fr: {
      title: "Discussion SkinGPT de la clinique",
      hint: "Envoyez une photo nette et rapprochée de la peau, puis posez votre question. Tapez /start pour savoir comment faire.",
      conversation: "Conversation",
      typing: "Le bot écrit…",
      photo: "Photo",
      questionLabel: "Votre question ou message",
      questionPlaceholder: "Écrivez votre question…",
      send: "Envoyer",
      sending: "Envoi…",
      removePhoto: "Retirer la photo",
      previewAlt: "Photo choisie",
      yourPhoto: "La photo envoyée",
      file: "Fichier",
      tooLarge: "Le fichier dépasse 20 Mo. Envoyez une photo plus petite.",
      emptyMessage: "Écrivez un message ou choisissez d’abord une photo.",
      offline: "Connexion perdue. Nouvel essai…",
      sessionEnded: "La session est terminée. Rechargez la page.",
      staleButton: "Ce bouton n’est plus disponible.",
      failed: "L’envoi a échoué. Réessayez.",
      unsupportedButton: "Indisponible dans cette discussion",
    },
    ar: {
      title: "محادثة SkinGPT في العيادة",
      hint: "أرسل صورة واضحة وقريبة للجلد ثم اكتب سؤالك. اكتب \u2066/start\u2069 لمعرفة طريقة الاستخدام.",
      conversation: "المحادثة",
      typing: "البوت يكتب…",
      photo: "صورة",
      questionLabel: "سؤالك أو رسالتك",
      questionPlaceholder: "اكتب سؤالك…",
      send: "إرسال",
      sending: "جارٍ الإرسال…",
      removePhoto: "إزالة الصورة",
      previewAlt: "الصورة المختارة",
      yourPhoto: "الصورة التي أرسلتها",
      file: "ملف",
      tooLarge: "حجم الملف أكبر من 20 ميغابايت. أرسل صورة أصغر.",
      emptyMessage: "اكتب رسالة أو اختر صورة أولاً.",
      offline: "انقطع الاتصال. جارٍ إعادة المحاولة…",
      sessionEnded: "انتهت الجلسة. أعد تحميل الصفحة.",
      staleButton: "هذا الزر لم يعد متاحاً.",
      failed: "تعذّر الإرسال. حاول مرة أخرى.",
      unsupportedButton: "غير متاح في هذه المحادثة",
    },
  };
  const ERROR_LABELS = {
    too_large: "tooLarge",
    no_session: "sessionEnded",
    stale_button: "staleButton",
    empty_text: "emptyMessage",
    no_file: "emptyMessage",
  };

  const language = pickLanguage();
  const t = (key) => LABELS[language][key] ?? LABELS.en[key];

  const conversation = document.getElementById("conversation");
  const typing = document.getElementById("typing");
  const notice = document.getElementById("notice");
  const composer = document.getElementById("composer");
  const photoInput = document.getElementById("photo");
  const question = document.getElementById("question");
  const sendButton = document.getElementById("send");
  const preview = document.getElementById("preview");
  const previewImage = document.getElementById("preview-image");
  const previewName = document.getElementById("preview-name");

  const shown = new Map(); // message id -> {element, signature}
  let pollTimer = 0;
  let polling = false;
  let pollAgain = false;
  let stopped = false;
  let noticeTimer = 0;
  let offline = false;
  let previewUrl = "";
  let sending = false;
  let quickUntil = 0;

  function pickLanguage() {
    const wanted = navigator.languages && navigator.languages.length
      ? navigator.languages
      : [navigator.language || "en"];
    for (const tag of wanted) {
      const primary = String(tag).toLowerCase().split("-")[0];
      if (Object.hasOwn(LABELS, primary)) {
        return primary;
      }
    }
    return "en";
  }

  function applyLanguage() {
    const root = document.documentElement;
    root.lang = language;
    root.dir = RTL_LANGUAGES.has(language) ? "rtl" : "ltr";
    document.title = t("title");
    for (const element of document.querySelectorAll("[data-text]")) {
      element.textContent = t(element.dataset.text);
    }
    for (const element of document.querySelectorAll("[data-placeholder]")) {
      element.placeholder = t(element.dataset.placeholder);
    }
    for (const element of document.querySelectorAll("[data-label]")) {
      element.setAttribute("aria-label", t(element.dataset.label));
    }
    for (const element of document.querySelectorAll("[data-alt]")) {
      element.alt = t(element.dataset.alt);
    }
  }

  // --- talking to the server ----------------------------------------------------------------

  async function request(path, { method = "GET", json, form } = {}) {
    const headers = {};
    let body;
    if (method === "POST") {
      headers["X-Web-Chat"] = "1";
    }
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    const response = await fetch(path, {
      method, headers, body, credentials: "same-origin", cache: "no-store",
    });
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok || !payload || payload.ok === false) {
      const error = new Error((payload && payload.description) || `HTTP ${response.status}`);
      error.code = payload && payload.error;
      error.status = response.status;
      throw error;
    }
    return payload;
  }

  function errorText(error) {
    const key = ERROR_LABELS[error.code];
    if (key) {
      return t(key);
    }
    return error.status ? error.message : t("failed");
  }

  async function poll() {
    window.clearTimeout(pollTimer);
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    let delay = Date.now() < quickUntil ? QUICK_POLL_MS : POLL_MS;
    try {
      const data = await request("/api/messages");
      setOffline(false);
      render(data.messages);
      typing.hidden = !data.typing;
      for (const item of data.notices || []) {
        showNotice(item.text, item.alert);
      }
    } catch (error) {
      if (error.status === 401) {
        stopped = true;
        showNotice(t("sessionEnded"), true);
      } else {
        setOffline(true);
        delay = RETRY_MS;
      }
    } finally {
      polling = false;
      if (!stopped) {
        pollTimer = window.setTimeout(poll, pollAgain ? 0 : delay);
      }
      pollAgain = false;
    }
  }

  // Quick answers (acknowledgements, button replies) then show up without a second's wait.
  function pollSoon() {
    quickUntil = Date.now() + QUICK_FOR_MS;
    poll();
  }

  function setOffline(isOffline) {
    if (isOffline && !offline) {
      showNotice(t("offline"), true);
    } else if (!isOffline && offline) {
      hideNotice();
    }
    offline = isOffline;
  }

  function showNotice(text, persistent = false) {
    window.clearTimeout(noticeTimer);
    notice.textContent = text;
    notice.hidden = false;
    if (!persistent) {
      noticeTimer = window.setTimeout(hideNotice, NOTICE_MS);
    }
  }

  function hideNotice() {
    notice.hidden = true;
    notice.textContent = "";
  }

  // --- the conversation ---------------------------------------------------------------------

  function atBottom() {
    return conversation.scrollHeight - conversation.scrollTop - conversation.clientHeight < 80;
  }

  function scrollToBottom() {
    conversation.scrollTop = conversation.scrollHeight;
  }

  function render(messages) {
    const follow = atBottom();
    const present = new Set();
    let added = false;
    messages.forEach((message, index) => {
      present.add(message.id);
      const signature = JSON.stringify(message);
      let entry = shown.get(message.id);
      if (!entry || entry.signature !== signature) {
        const element = buildMessage(message);
        if (entry) {
          entry.element.replaceWith(element); // an edit: same place, new content
        } else {
          added = true;
        }
        entry = { element, signature };
        shown.set(message.id, entry);
      }
      const current = conversation.children[index];
      if (current !== entry.element) {
        conversation.insertBefore(entry.element, current || null);
      }
    });
    for (const [id, entry] of shown) {
      if (!present.has(id)) {
        entry.element.remove(); // deleted by the bot
        shown.delete(id);
      }
    }
    if (added && follow) {
      scrollToBottom();
    }
  }

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) {
      element.className = className;
    }
    if (text !== undefined) {
      element.textContent = text;
    }
    return element;
  }

  function buildMessage(message) {
    const item = node("li", `message ${message.from === "user" ? "user" : "bot"}`);
    item.dir = "auto";
    item.dataset.messageId = String(message.id);
    // Parts other than the text carry their own dir, so the message takes its text's direction.
    if (message.reply_to) {
      const quoted = message.reply_to.text ?? t(message.reply_to.kind === "photo" ? "photo" : "file");
      const quote = node("div", "quote", quoted);
      quote.dir = "auto";
      item.append(quote);
    }
    if (message.photo !== undefined) {
      item.append(photoElement(message.photo));
    }
    if (message.document) {
      const size = message.document.size ? ` (${formatSize(message.document.size)})` : "";
      const file = node("div", "file", `${t("file")}: ${message.document.name || "-"}${size}`);
      file.dir = "auto";
      item.append(file);
    }
    if (message.text !== undefined) {
      const text = node("div", "text");
      text.append(renderText(message.text, message.entities || []));
      item.append(text);
    }
    if (message.buttons && message.buttons.length) {
      item.append(keyboard(message, item));
    }
    return item;
  }

  function photoElement(url) {
    if (!url) {
      const missing = node("div", "file", t("photo"));
      missing.dir = "auto";
      return missing;
    }
    const image = node("img", "photo");
    image.alt = t("yourPhoto");
    image.src = url;
    image.addEventListener("load", () => {
      if (atBottom() || conversation.lastElementChild?.contains(image)) {
        scrollToBottom();
      }
    });
    return image;
  }

  function formatSize(bytes) {
    if (bytes >= 1024 * 1024) {
      return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
    }
    return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  }

  // Telegram entities: offsets and lengths count UTF-16 code units, as JavaScript strings do.
  function renderText(text, entities) {
    const fragment = document.createDocumentFragment();
    const valid = entities
      .filter((e) => Number.isInteger(e.offset) && Number.isInteger(e.length) && e.length > 0)
      .slice()
      .sort((a, b) => a.offset - b.offset || b.length - a.length);
    appendRange(fragment, text, 0, text.length, valid);
    return fragment;
  }

  function appendRange(parent, text, start, end, entities) {
    let position = start;
    let index = 0;
    while (index < entities.length) {
      const entity = entities[index];
      const entityEnd = entity.offset + entity.length;
      let next = index + 1;
      while (next < entities.length && entities[next].offset < entityEnd) {
        next += 1; // nested inside this entity
      }
      const from = Math.max(entity.offset, position);
      const to = Math.min(entityEnd, end);
      if (from < to) {
        if (from > position) {
          parent.append(text.slice(position, from));
        }
        const element = entityElement(entity, text.slice(entity.offset, entityEnd));
        appendRange(element, text, from, to, entities.slice(index + 1, next));
        parent.append(element);
        position = to;
      }
      index = next;
    }
    if (position < end) {
      parent.append(text.slice(position, end));
    }
  }

  function safeUrl(raw) {
    try {
      const url = new URL(raw, window.location.href);
      return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
    } catch {
      return null;
    }
  }

  function link(href) {
    const url = href && safeUrl(href);
    if (!url) {
      return node("span", "link");
    }
    const anchor = node("a");
    anchor.href = url;
    anchor.target = "_blank";
    anchor.rel = "noopener noreferrer";
    return anchor;
  }

  function entityElement(entity, covered) {
    switch (entity.type) {
      case "bold":
        return node("strong");
      case "italic":
        return node("em");
      case "underline":
        return node("u");
      case "strikethrough":
        return node("s");
      case "code":
        return node("code");
      case "pre":
        return node("pre");
      case "blockquote":
      case "expandable_blockquote":
        return node("blockquote");
      case "text_link":
        return link(entity.url);
      case "url":
        return link(/^[a-z][a-z0-9+.-]*:/i.test(covered) ? covered : `http://${covered}`);
      case "email":
        return link(`mailto:${covered}`);
      case "phone_number":
        return link(`tel:${covered.replace(/[^0-9+]/g, "")}`);
      case "spoiler": {
        const spoiler = node("span", "spoiler");
        spoiler.tabIndex = 0;
        spoiler.setAttribute("role", "button");
        const reveal = () => spoiler.classList.add("revealed");
        spoiler.addEventListener("click", reveal);
        spoiler.addEventListener("keydown", (event) => {
          if (event.key === "Enter" || event.key === " ") {
            reveal();
          }
        });
        return spoiler;
      }
      default:
        return node("span", `entity-${String(entity.type).replace(/[^a-z_]/g, "")}`);
    }
  }

  function keyboard(message, item) {
    const board = node("div", "keyboard");
    for (const row of message.buttons) {
      const line = node("div", "keyboard-row");
      for (const button of row) {
        line.append(keyboardButton(message.id, button, item));
      }
      board.append(line);
    }
    return board;
  }

  function keyboardButton(messageId, button, item) {
    const url = button.url && safeUrl(button.url);
    if (url) {
      const anchor = node("a", "inline-button", button.text);
      anchor.dir = "auto";
      anchor.href = url;
      anchor.target = "_blank";
      anchor.rel = "noopener noreferrer";
      return anchor;
    }
    const element = node("button", "inline-button", button.text);
    element.type = "button";
    element.dir = "auto";
    if (button.data === undefined) {
      element.disabled = true;
      element.title = t("unsupportedButton");
      return element;
    }
    element.addEventListener("click", () => press(messageId, button.data, item));
    return element;
  }

  async function press(messageId, data, item) {
    const buttons = item.querySelectorAll(".keyboard button");
    buttons.forEach((button) => { button.disabled = true; });
    try {
      await request("/api/button", { method: "POST", json: { message_id: messageId, data } });
      pollSoon();
    } catch (error) {
      showNotice(errorText(error));
      if (error.code !== "stale_button") {
        buttons.forEach((button) => { button.disabled = false; });
      }
    }
  }

  // --- sending --------------------------------------------------------------------------------

  function setSending(busy) {
    sending = busy;
    sendButton.disabled = busy;
    sendButton.textContent = busy ? t("sending") : t("send");
    composer.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function showPreview() {
    const file = photoInput.files && photoInput.files[0];
    if (previewUrl) {
      URL.revokeObjectURL(previewUrl);
      previewUrl = "";
    }
    if (!file) {
      preview.hidden = true;
      return;
    }
    if (file.size > MAX_UPLOAD_BYTES) {
      showNotice(t("tooLarge"));
    }
    previewName.textContent = file.name;
    if (file.type.startsWith("image/")) {
      previewUrl = URL.createObjectURL(file);
      previewImage.src = previewUrl;
      previewImage.hidden = false;
    } else {
      previewImage.removeAttribute("src");
      previewImage.hidden = true;
    }
    preview.hidden = false;
  }

  function clearPhoto() {
    photoInput.value = "";
    showPreview();
  }

  async function send() {
    if (sending) {
      return;
    }
    const file = photoInput.files && photoInput.files[0];
    const text = question.value.trim();
    if (!file && !text) {
      showNotice(t("emptyMessage"));
      question.focus();
      return;
    }
    if (file && file.size > MAX_UPLOAD_BYTES) {
      showNotice(t("tooLarge"));
      return;
    }
    setSending(true);
    try {
      if (file) {
        // A question too long for a caption follows the photo as its own message.
        const caption = text.length <= MAX_CAPTION ? text : "";
        const form = new FormData();
        form.append("file", file, file.name);
        if (caption) {
          form.append("caption", caption);
        }
        await request("/api/upload", { method: "POST", form });
        clearPhoto();
        if (text && !caption) {
          await request("/api/text", { method: "POST", json: { text } });
        }
      } else {
        await request("/api/text", { method: "POST", json: { text } });
      }
      question.value = "";
      pollSoon();
      window.requestAnimationFrame(scrollToBottom);
    } catch (error) {
      showNotice(errorText(error));
    } finally {
      setSending(false);
    }
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  photoInput.addEventListener("change", showPreview);
  document.getElementById("remove-photo").addEventListener("click", () => {
    clearPhoto();
    photoInput.focus();
  });

  applyLanguage();
  poll();
})();
